"""The one figure saver of every stage that draws (science figures, modular and image figures)."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, out_dir: str | Path, name: str, formats: tuple[str, ...] = ("png", "pdf")) -> list[str]:
    """Write ``fig`` as ``<out_dir>/<name>.<ext>`` for each format (110 dpi, tight bounding box;
    PDFs carry no creation date, so a rerun on unchanged data gives identical files), close it,
    and return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in formats:
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"CreationDate": None} if ext == "pdf" else {})
        paths.append(str(path))
    fig.clf()
    import matplotlib.pyplot as plt  # a pyplot figure is also dropped from pyplot's registry

    plt.close(fig)
    return paths
