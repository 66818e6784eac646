"""Figures of one image experiment (PNG, matplotlib Agg).

* ``test_acc_vs_rho.png``  final clean accuracy (mean +- sd over seeds) and shortcut reliance vs rho,
  one line per lambda;
* ``norm_curves.png``       V = ||theta||^2 over epochs, one colour per lambda (at the reference rho);
* ``phase_diagram.png``     lambda x rho grid coloured by the most common regime (the one vocabulary of
  :mod:`nht.core.events`), annotated with the mean decay from peak (%);
* ``layer_norms.png``       per-tensor V over epochs for the smallest and largest lambda (reference rho).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nht.core.events import REGIMES  # noqa: E402
from nht.core.history import read_history  # noqa: E402
from nht.domains.images.summary import _pick_reference, load_cells  # noqa: E402
from nht.science.plotting import save_figure  # noqa: E402

FIGURES = ("test_acc_vs_rho", "norm_curves", "phase_diagram", "layer_norms")


def make_figures(norms_paths, history_paths, out_dir: str | Path, exp_config: dict | None = None) -> list[str]:
    """Draw the figures from the cells' ``norms.json`` and their ``history.csv`` (``history_paths[i]``
    is the history of ``norms_paths[i]``) into ``out_dir``; returns the paths written."""
    exp_config = exp_config or {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = load_cells(norms_paths)
    history_of = dict(zip(df["cell"], history_paths))

    def _history(cell: str) -> pd.DataFrame:
        return read_history(history_of[cell])

    ok = df[df["status"] != "diverged"]
    ref_rho = _pick_reference(df, "rho", "weight_decay", exp_config.get("reference_rho"))
    lams = sorted(df["weight_decay"].unique())
    cmap = plt.get_cmap("viridis")
    colour = {lam: cmap(i / max(1, len(lams) - 1)) for i, lam in enumerate(lams)}
    paths = []

    # 1. clean accuracy and reliance vs rho
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for lam, g in ok.groupby("weight_decay"):
        for ax, col in zip(axes, ("final_test_acc", "final_phi")):
            st = g.groupby("rho")[col].agg(["mean", "std"]).fillna(0.0)
            ax.errorbar(st.index, st["mean"], yerr=st["std"], marker="o", capsize=3,
                        color=colour[lam], label=f"λ={lam:g}")
    axes[0].set(xlabel="shortcut strength ρ", ylabel="final clean accuracy", ylim=(0, 1))
    axes[1].set(xlabel="shortcut strength ρ", ylabel="shortcut reliance (conflicting set)", ylim=(0, 1))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    paths += save_figure(fig, out, FIGURES[0], ('png',))

    # 2. V over epochs per lambda at the reference rho
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sel = df[np.isclose(df["rho"], ref_rho)]
    for _, row in sel.iterrows():
        h = _history(row["cell"])
        ax.plot(h["epoch"], h["V"], color=colour[row["weight_decay"]], alpha=0.8,
                label=f"λ={row['weight_decay']:g}")
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=7)
    ax.set(xlabel="epoch", ylabel="V = ||θ||² (squared L2)", yscale="log", title=f"ρ = {ref_rho:g}")
    fig.tight_layout()
    paths += save_figure(fig, out, FIGURES[1], ('png',))

    # 3. phase diagram lambda x rho
    rhos = sorted(df["rho"].unique())
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(rhos), 1.2 + 0.6 * len(lams)))
    grid = np.full((len(lams), len(rhos)), np.nan)
    for i, lam in enumerate(lams):
        for j, rho in enumerate(rhos):
            g = df[(df["weight_decay"] == lam) & (df["rho"] == rho)]
            if g.empty:
                continue
            regime = g["regime"].mode().iloc[0]
            grid[i, j] = REGIMES.index(regime)
            dec = g["decay_pct"].dropna()
            short = {"intermediate": "interm."}.get(regime, regime)
            ax.text(j, i, f"{short}\n{dec.mean():.0f}%" if len(dec) else short,
                    ha="center", va="center", fontsize=7)
    ax.imshow(grid, cmap="coolwarm", vmin=0, vmax=len(REGIMES) - 1, aspect="auto", origin="lower")
    ax.set_xticks(range(len(rhos)), [f"{r:g}" for r in rhos])
    ax.set_yticks(range(len(lams)), [f"{lam:g}" for lam in lams])
    ax.set(xlabel="ρ", ylabel="λ", title="regime (nht.core.events), mean decay from V peak")
    fig.tight_layout()
    paths += save_figure(fig, out, FIGURES[2], ('png',))

    # 4. per-layer norms for the smallest and largest lambda
    picks = []
    for lam in (lams[0], lams[-1]) if len(lams) > 1 else (lams[0],):
        g = sel[sel["weight_decay"] == lam].sort_values("seed")
        if not g.empty:
            picks.append(g.iloc[0])
    fig, axes = plt.subplots(1, max(1, len(picks)), figsize=(5 * max(1, len(picks)), 3.5), squeeze=False)
    for ax, row in zip(axes[0], picks):
        h = _history(row["cell"])
        for col in [c for c in h.columns if c.startswith("V:")]:
            ax.plot(h["epoch"], h[col], label=col.split(":", 1)[1])
        ax.set(xlabel="epoch", ylabel="per-layer V (squared L2)", yscale="log",
               title=f"λ={row['weight_decay']:g}, ρ={row['rho']:g}")
        if h.shape[1] < 40:
            ax.legend(fontsize=6)
    fig.tight_layout()
    paths += save_figure(fig, out, FIGURES[3], ('png',))
    return paths
