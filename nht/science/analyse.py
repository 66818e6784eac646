"""The science layer of one experiment of any domain: :func:`analyse_experiment` (``science.json``).

It reads only per-cell records (a DataFrame of ``norms.json`` rows) and history tables, and
assembles the pieces, each in its own module and tested on synthetic data built to hold and to
fail (``tests/test_science.py``):

* :mod:`nht.science.delay_law` -- the one retrospective delay-law fit (a description), its ``1/(eta
  lambda)`` baseline, the tautology diagnostic and censoring;
* :mod:`nht.science.prediction` -- the P6 verdict: leave-one-group-out predictions known at ``T_fit``,
  NHT vs baseline with a paired interval, and the norm-shift test at fixed ``eta lambda``;
* :mod:`nht.science.separation` -- the clean-norm separation S (P5) with its nulls (also for images);
* :mod:`nht.science.verdict_inputs` -- decay rate, P1 (different solutions), P2 (Kendall tau-b), P4;
* :mod:`nht.science.figures` -- the figures.

Conventions: V is always the *squared* L2 norm; time in optimizer steps; ``eta`` = ``lr``,
``lambda`` = ``weight_decay``. Intervals are BCa bootstrap intervals with >= 8 units, else absent
(verdict ``uncertain``). Everything returned is JSON-serialisable (undefined numbers ``None``).
The estimators are documented in ``workflow/report/science.rst``.
"""

from __future__ import annotations

import pandas as pd

from nht.core.io import clean_json
from nht.science.cellrecords import records
from nht.science.delay_law import fit_delay_laws, fit_points
from nht.science.prediction import predictive_verdict
from nht.science.figures import (plot_clean_separation, plot_decay_rate, plot_delay_law,
                                 plot_norm_fits, plot_prediction)
from nht.science.separation import S_THRESHOLD, clean_norm_separation, clean_norm_separation_cell
from nht.science.verdict_inputs import (decay_rate, decay_rates, layer_hierarchy, norm_ordering,
                                regime_ordering)

__all__ = ["analyse_experiment", "clean_json", "fit_delay_laws", "predictive_verdict",
           "clean_norm_separation", "clean_norm_separation_cell",
           "decay_rate", "decay_rates", "norm_ordering", "regime_ordering", "layer_hierarchy",
           "S_THRESHOLD"]


def analyse_experiment(cells: pd.DataFrame, histories: dict[str, pd.DataFrame], figure_dir: str | None,
                    n_boot: int = 1000, seed: int = 0, layers: dict | None = None,
                    n_null: int = 1000) -> dict:
    """Everything the science layer measures on one experiment, whatever its domain.

    ``cells``: one row per cell with the ``norms.json`` fields (``cell``, ``status``,
    ``regime``, ``T_fit``, ``T_transition``, ``delay``, ``V_fit``, ``V_transition``, ``V_final``, ``T_pred``,
    ``stop_step``, ``lr``, ``weight_decay``, ``init_scale``, ``seed``, ``op``, ``p``,
    ``optimizer``, ``model``; optional ``test_acc_at_fit``, ``delay_lower_bound``).
    ``histories``: ``{cell_id: DataFrame}`` with ``step``, ``V``, ``test_acc``. Per-layer values
    come from ``layers`` (``{cell_id: norms["layers"]}``), else a ``layers`` column, else
    ``layer_<field>:<name>`` columns. Figures (PNG + PDF) go to ``figure_dir`` (``None``: no
    figures, ``figures`` is empty; the numbers are the same).

    Returns ``{delay_law, baseline_inverse_eta_lambda, delay_law_log, scaling_exponent, per_op,
    censoring, fit_cells, excluded, prediction, decay_rate, clean_norm_separation,
    norm_ordering, regime_ordering, layer_hierarchy, figures}``.
    """
    recs = records(cells)
    fits = fit_delay_laws(recs, n_boot=n_boot, seed=seed)
    pred = predictive_verdict(recs, histories, n_boot=n_boot, seed=seed)
    rates = decay_rates(recs, histories, n_boot=n_boot, seed=seed)
    sep = clean_norm_separation(recs, histories, n_boot=n_boot, seed=seed, n_null=n_null)
    figures = []
    if figure_dir is not None:
        figures = plot_delay_law(fit_points(recs), fits, figure_dir)
        figures += plot_prediction(pred, figure_dir)
        figures += plot_norm_fits(recs, histories, rates, figure_dir)
        figures += plot_decay_rate(recs, rates, figure_dir)
        figures += plot_clean_separation(sep, figure_dir)
    out = dict(fits)
    out.update({"prediction": pred, "decay_rate": rates, "clean_norm_separation": sep,
                "norm_ordering": norm_ordering(recs, histories, n_boot=n_boot, seed=seed,
                                               n_null=min(n_null, 500)),
                "regime_ordering": regime_ordering(recs, n_boot=n_boot, seed=seed),
                "layer_hierarchy": layer_hierarchy(recs, layers), "figures": figures})
    return clean_json(out)
