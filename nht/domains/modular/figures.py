"""Figures for modular experiments (PNG for the report, PDF for papers).

* ``curves``: train/test accuracy and V = ||theta||^2 over steps (log x) per cell, T_fit and T_transition
  marked.
* ``regimes``: regime of every cell over (lambda, alpha) and (lambda, eta).

The delay law (delay vs T_pred and vs 1/(eta lambda)) is drawn once, for every domain, by the
science stage (``delay_law_bootstrap``, :mod:`nht.science.figures`).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from nht.core.events import REGIMES  # noqa: E402
from nht.science.plotting import save_figure as save  # noqa: E402

REGIME_COLORS = {"strong": "#7f7f7f", "weak": "#d62728", "intermediate": "#2ca02c",
                 "immediate": "#1f77b4", "diverged": "#000000"}
FIGURES = ("curves", "regimes")


def _label(rec: pd.Series) -> str:
    return f"λ={rec['weight_decay']:g} η={rec['lr']:g} α={rec['init_scale']:g} s={rec['seed']}"


def plot_curves(cells: pd.DataFrame, histories: dict[str, pd.DataFrame], out_dir, max_cells: int = 48) -> list[str]:
    chosen = cells.sort_values(["weight_decay", "lr", "init_scale", "seed"]).head(max_cells)
    n = max(len(chosen), 1)
    cols = min(6, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (_, rec) in zip(axes.flat, chosen.iterrows()):
        h = histories[rec["cell"]]
        x = h["step"].to_numpy() + 1
        ax.plot(x, h["train_acc"], color="#1f77b4", lw=1, label="train acc")
        ax.plot(x, h["test_acc"], color="#ff7f0e", lw=1, label="test acc")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax2 = ax.twinx()
        ax2.plot(x, h["V"], color="#2ca02c", lw=1, label="V=‖θ‖²")
        ax2.set_yscale("log")
        ax2.tick_params(labelsize=6)
        for t, style in ((rec.get("T_fit"), ":"), (rec.get("T_transition"), "--")):
            if t is not None and not pd.isna(t):
                ax.axvline(t + 1, color="k", ls=style, lw=0.8)
        ax.set_title(f"{_label(rec)}\n{rec['regime']}", fontsize=7)
        ax.tick_params(labelsize=6)
    axes.flat[0].legend(fontsize=6, loc="lower right")
    fig.suptitle("accuracy (left) and V = ‖θ‖² (right, green) vs step+1; dotted T_fit, dashed T_transition", fontsize=9)
    fig.tight_layout()
    return save(fig, out_dir, "curves")


def _regime_panel(ax, cells: pd.DataFrame, xcol: str, ycol: str) -> None:
    xs, ys = sorted(cells[xcol].unique()), sorted(cells[ycol].unique())
    for (xv, yv), grp in cells.groupby([xcol, ycol]):
        counts = grp["regime"].value_counts()
        ax.scatter(xs.index(xv), ys.index(yv), s=500, marker="s", color=REGIME_COLORS[counts.index[0]])
        if len(grp) > 1:
            ax.text(xs.index(xv), ys.index(yv), "/".join(str(c) for c in counts.values), ha="center",
                    va="center", fontsize=7, color="white")
    ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_xlabel({"weight_decay": "λ (weight decay)"}.get(xcol, xcol))
    ax.set_ylabel({"init_scale": "α (init scale)", "lr": "η (learning rate)"}.get(ycol, ycol))
    ax.margins(0.2)


def plot_regimes(cells: pd.DataFrame, out_dir) -> list[str]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _regime_panel(axes[0], cells, "weight_decay", "init_scale")
    _regime_panel(axes[1], cells, "weight_decay", "lr")
    handles = [plt.Line2D([], [], marker="s", ls="", color=REGIME_COLORS[r], label=r) for r in REGIMES]
    fig.legend(handles=handles, loc="upper center", ncol=len(REGIMES), fontsize=8)
    fig.suptitle("majority regime per grid point (numbers: counts when cells share a point)", y=0.02, fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 0.92))
    return save(fig, out_dir, "regimes")


def make_figures(cells: pd.DataFrame, histories: dict[str, pd.DataFrame], out_dir,
                 max_cells: int = 48) -> list[str]:
    """Write every modular figure into ``out_dir``; returns the written paths."""
    paths = plot_curves(cells, histories, out_dir, max_cells)
    paths += plot_regimes(cells, out_dir)
    return paths
