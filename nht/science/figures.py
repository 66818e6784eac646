"""Figures of the modular science layer (PNG for the report, PDF for papers). Stems are fixed by
the workflow: ``delay_law_bootstrap``, ``prospective``, ``norm_fits``, ``decay_rate``,
``clean_separation``. V is the squared norm; time in steps."""

from __future__ import annotations

import math

import numpy as np

from nht.science.cellrecords import eta_lambda, num, time_sorted
from nht.science.plotting import save_figure


def _fig(ncols=1, width=5.0, height=4.0):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height))
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _save(fig, figure_dir: str, stem: str) -> list[str]:
    fig.tight_layout()
    return save_figure(fig, figure_dir, stem)


def _ci_text(ci) -> str:
    return "n<8: no interval" if not ci else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def plot_delay_law(points: dict, fits: dict, figure_dir: str) -> list[str]:
    """Retrospective description: delay vs T_pred and vs 1/(eta lambda), OLS and Theil-Sen."""
    fig, axes = _fig(2)
    specs = [("law", "delay_law", "T_pred = ln(V_fit/V_final)/(2ηλ)  [steps]"),
             ("baseline", "baseline_inverse_eta_lambda", "1/(ηλ)  [steps]")]
    for ax, (pkey, fkey, xlabel) in zip(axes, specs):
        x, y = (np.asarray(v, float) for v in points[pkey])
        fit = fits[fkey]
        ax.set_xlabel(xlabel)
        ax.set_ylabel("delay = T_transition − T_fit  [steps]")
        if x.size == 0 or fit["k"] is None:
            ax.text(0.5, 0.5, "no fit (too few cells)", ha="center", transform=ax.transAxes)
            ax.scatter(x, y, s=18, color="C0")
            continue
        ax.scatter(x, y, s=18, color="C0", zorder=3)
        grid = np.linspace(0, x.max() * 1.05, 100)
        ax.plot(grid, fit["k"] * grid + fit["b"], color="C3", label="OLS")
        ts = fit["theil_sen"]
        if ts["slope"] is not None:
            ax.plot(grid, ts["slope"] * grid + ts["intercept"], color="C2", ls="-.",
                    label="Theil–Sen")
        title = (f"k={fit['k']:.3g} {_ci_text(fit['k_ci'])}  R²={fit['r2']:.3f}  n={fit['n']}")
        if fkey == "delay_law":
            ax.plot(grid, grid, "k--", lw=0.8, label="theory: delay = T_pred")
            taut = fit.get("tautology_r2")
            title += "\ntautology R²(ln T_pred ~ ln(delay+margin)) = " + (
                f"{taut:.3f}" if taut is not None else "n/a")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7)
    return _save(fig, figure_dir, "delay_law_bootstrap")


def plot_prediction(pred: dict, figure_dir: str) -> list[str]:
    """Out-of-sample (leave-one-group-out) predicted vs observed delay, per predictor."""
    fig, axes = _fig(1, 5.8, 5.2)
    ax = axes[0]
    cells = list(pred["per_cell"].values())
    obs = [c for c in cells if c["kind"] == "observed"]
    cens = [c for c in cells if c["kind"] == "censored"]
    names = (("nht", "o"), ("nht_theory", "^"), ("baseline_inverse_eta_lambda", "s"),
             ("same_eta_lambda_mean", "D"), ("per_lambda_mean", "x"))
    vals = []
    for i, (name, marker) in enumerate(names):
        pts = [(c["delay_or_cap"], c[name]) for c in obs if c[name] is not None and c[name] > 0]
        if not pts:
            continue
        loo = pred["loo_error"].get(name) or {"n": len(pts), "median": None}
        hidden = loo.get("n_observed", loo["n"]) - len(pts)
        ax.scatter(*zip(*pts), s=22, marker=marker, color=f"C{i}",
                   label=f"{name} (median err {loo['median']:.2f}, n={loo['n']}"
                   + (f"; {hidden} at ≤ 0 not shown)" if hidden else ")")
                   if loo["median"] is not None else name)
        vals += [v for p in pts for v in p]
        cpts = [(c["delay_or_cap"], c[name]) for c in cens if c[name] is not None and c[name] > 0]
        if cpts:
            ax.scatter(*zip(*cpts), s=30, marker=">", color=f"C{i}", alpha=0.5)
            vals += [v for p in cpts for v in p]
    if vals:
        lo, hi = min(vals) * 0.8, max(vals) * 1.25
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="perfect prediction")
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no predicted cell", ha="center", transform=ax.transAxes)
    verdict = pred["nht_beats_baseline"]
    pdiff = pred["paired_difference"]
    ax.set_title("leave-one-group-out delay prediction at T_fit (censored as bounds)\n"
                 f"NHT beats 1/(ηλ): {verdict}, beats same-ηλ mean: "
                 f"{pred.get('nht_beats_same_eta_lambda_mean')}\n(median err_base − err_nht = "
                 + (f"{pdiff['median']:.3g}" if pdiff["median"] is not None else "n/a")
                 + f" {_ci_text(pdiff['ci'])})", fontsize=8)
    ax.set_xlabel("observed delay [steps] (▶ censored: x = cap)")
    ax.set_ylabel("predicted delay [steps]")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)
    return _save(fig, figure_dir, "prospective")


def plot_norm_fits(recs, histories, rates: dict, figure_dir: str, max_cells: int = 6):
    """ln V over steps for up to ``max_cells`` cells with the fitted and theoretical decay."""
    chosen = [r for r in recs if r["cell"] in rates["per_cell"]
              and rates["per_cell"][r["cell"]]["gamma"] is not None]
    chosen.sort(key=lambda r: num(r.get("delay")) or 0)
    if len(chosen) > max_cells:
        idx = np.linspace(0, len(chosen) - 1, max_cells).round().astype(int)
        chosen = [chosen[i] for i in idx]
    ncols = max(1, min(3, len(chosen)))
    nrows = max(1, math.ceil(len(chosen) / 3))
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.5 * ncols, 3.4 * nrows))
    if not chosen:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no cell with a fitted decay window", ha="center", transform=ax.transAxes)
    for i, rec in enumerate(chosen):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        h = time_sorted(histories[rec["cell"]])
        r = rates["per_cell"][rec["cell"]]
        ax.plot(h["step"], h["V"], color="C0", lw=1, label="V = ‖θ‖²")
        t = np.linspace(rec["T_fit"], rec["T_transition"], 50)
        ax.plot(t, np.exp(r["a"] - r["gamma"] * t), color="C3", lw=2,
                label=f"fit γ/(2ηλ)={r['ratio']:.2f}")
        vm = h.loc[h["step"] <= rec["T_fit"], "V"].iloc[-1]
        ax.plot(t, vm * np.exp(-2 * eta_lambda(rec) * (t - rec["T_fit"])), "k--", lw=1,
                label="theory exp(−2ηλt)")
        ax.axvline(rec["T_fit"], color="grey", ls=":", lw=0.8)
        ax.axvline(rec["T_transition"], color="green", ls=":", lw=0.8)
        ax.set_yscale("log")
        v = h["V"].to_numpy(float)
        v = v[np.isfinite(v) & (v > 0)]
        if v.size:  # keep the data readable; the theory line may leave the axes
            ax.set_ylim(v.min() / 3, v.max() * 3)
        ax.set_xlabel("step")
        ax.set_title(f"{rec['cell'][:40]}", fontsize=7)
        ax.legend(fontsize=6)
    return _save(fig, figure_dir, "norm_fits")


def plot_decay_rate(recs, rates: dict, figure_dir: str):
    """gamma/(2 eta lambda) per cell against lambda, with the theory's 1."""
    fig, axes = _fig(1, 5.5, 4.0)
    ax = axes[0]
    lrs = sorted({r.get("lr") for r in recs if r["cell"] in rates["per_cell"]}, key=str)
    any_pt = False
    for i, lr in enumerate(lrs):
        pts = [(float(r["weight_decay"]), rates["per_cell"][r["cell"]]["ratio"]) for r in recs
               if r["cell"] in rates["per_cell"] and r.get("lr") == lr
               and rates["per_cell"][r["cell"]]["ratio"] is not None]
        if pts:
            any_pt = True
            ax.scatter(*zip(*pts), s=20, color=f"C{i}", label=f"η={lr}")
    ax.axhline(1.0, color="k", ls="--", lw=0.8, label="theory: γ = 2ηλ")
    rt = rates["ratio_to_theory"]
    if rt["ci"]:
        ax.axhspan(rt["ci"][0], rt["ci"][1], color="C3", alpha=0.15, label="median, 95% BCa")
    if any_pt:
        ax.set_xscale("log")
        ax.legend(fontsize=7)
    med = rt["median"]
    ax.set_title("decay rate of ln V between T_fit and T_transition\nmedian γ/(2ηλ) = "
                 + (f"{med:.2f}" if med is not None else "n/a") + f" {_ci_text(rt['ci'])}, "
                 f"n={rt['n']} → {rates['verdict']}", fontsize=9)
    ax.set_xlabel("weight decay λ")
    ax.set_ylabel("γ / (2ηλ)")
    return _save(fig, figure_dir, "decay_rate")


def plot_clean_separation(sep: dict, figure_dir: str):
    """S per cell by regime, the threshold and both nulls' 95th percentiles."""
    fig, axes = _fig(1, 5.5, 4.0)
    ax = axes[0]
    regimes = sorted({c["regime"] for c in sep["per_cell"].values()}, key=str)
    for i, reg in enumerate(regimes):
        vals = [c["S"] for c in sep["per_cell"].values() if c["regime"] == reg and c["S"] is not None]
        ax.scatter(vals, np.full(len(vals), i) + np.linspace(-0.2, 0.2, len(vals)) if vals else [],
                   s=18, color=f"C{i}")
    ax.set_yticks(range(len(regimes)), [str(r) for r in regimes])
    ax.axvline(sep["threshold"], color="k", ls="--", lw=0.8, label=f"threshold {sep['threshold']}")
    for key, style in (("null_pairing", ":"), ("null_circular", "-.")):
        q = sep[key]["q95"]
        if q is not None:
            ax.axvline(q, color="C3", ls=style, lw=1, label=f"{key} 95th pct {q:.2f}")
    ax.set_xlim(-1.05, 1.05)
    s = sep["S"]
    ax.set_title("clean-norm separation S per cell\nexperiment S = "
                 + (f"{s:.2f}" if s is not None else "n/a") + f" → {sep['verdict']}", fontsize=9)
    ax.set_xlabel("S = P(ln V reliant > ln V structured) − P(<)")
    ax.legend(fontsize=7)
    return _save(fig, figure_dir, "clean_separation")
