"""The one history schema: what every trainer of every domain writes, and all analysis reads.

A history is a table (``history.csv``, one per cell) with one row per evaluation, in time order:

=================  ===============================================================================
column             meaning
=================  ===============================================================================
``step``           optimizer updates done so far (0 = the initialisation, before any update)
``epoch``          passes over the training set done so far; only where epochs exist (images).
                   Modular minibatches are drawn with replacement, so modular histories have none
``Lambda``         cumulative decay budget ``sum over updates s <= step of eta_s * lambda``
                   (dimensionless). Constant lr: ``eta * lambda * step``. It puts constant-lr and
                   cosine runs on one time axis: weight decay alone shrinks V as ``exp(-2 Lambda)``
``train_acc``      accuracy on the training set (fraction). Images: running mean over the epoch's
                   minibatches (NaN at step 0)
``test_acc``       accuracy on held-out data without the shortcut: modular test pairs; images the
                   clean test set (no border cue)
``phi``            shortcut reliance in [0, 1]: modular ``1 - test_acc`` (the memorised answer
                   does not carry over); images the share of cue-conflicting test images
                   classified as the cue's class
``loss``           training loss (cross-entropy). Modular: on the full training set at the
                   evaluation; images: running mean over the epoch (NaN at step 0)
``V``              squared L2 norm of all parameters, ``||theta||^2`` (V is always squared)
``V:<tensor>``     squared L2 norm of one parameter tensor, named as ``named_parameters()`` names
                   it (e.g. ``V:fc1.weight``, ``V:embed.weight``)
=================  ===============================================================================

Domains may add columns after these (modular: ``test_loss``; images: ``lr``, ``wall_s``,
``aligned_acc``, ``conflicting_acc``, ``shortcut_only_acc``, ``group_acc:y<y>_a<a>``,
``worst_group_acc``, ``V_no_norm`` = V without normalisation-layer parameters). A cell that
diverged ends with its last finite evaluation; its status is in the cell's meta record, not in the
table.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

REQUIRED = ("step", "Lambda", "train_acc", "test_acc", "phi", "loss", "V")
TENSOR_PREFIX = "V:"


class HistoryError(ValueError):
    """A table that does not follow the history schema."""


def tensor_column(name: str) -> str:
    """The history column of one parameter tensor's squared norm."""
    return TENSOR_PREFIX + name


def tensor_columns(history: pd.DataFrame) -> list[str]:
    """The ``V:<tensor>`` columns of a history, in table order (= parameter order)."""
    return [c for c in history.columns if c.startswith(TENSOR_PREFIX)]


def ordered_columns(columns: Iterable[str]) -> list[str]:
    """Schema order: the required columns, ``epoch`` after ``step``, the domain's extra columns,
    then the ``V:<tensor>`` columns."""
    cols = list(dict.fromkeys(columns))
    head = ["step"] + (["epoch"] if "epoch" in cols else []) + [c for c in REQUIRED if c != "step"]
    tensors = [c for c in cols if c.startswith(TENSOR_PREFIX)]
    return head + [c for c in cols if c not in head and c not in tensors] + tensors


def check_history(history: pd.DataFrame, where: str = "history") -> pd.DataFrame:
    """``history`` if it follows the schema, else :class:`HistoryError` naming ``where`` and what is
    wrong: a missing required column, no rows, a non-numeric required column, steps out of order."""
    missing = [c for c in REQUIRED if c not in history.columns]
    if missing:
        raise HistoryError(f"{where}: missing column(s) {', '.join(missing)}; a history has "
                           f"{', '.join(REQUIRED)} (see nht.core.history)")
    if len(history) == 0:
        raise HistoryError(f"{where}: no rows (a history starts with the evaluation at step 0)")
    text = [c for c in REQUIRED if not pd.api.types.is_numeric_dtype(history[c])]
    if text:
        raise HistoryError(f"{where}: column(s) {', '.join(text)} hold non-numbers (e.g. "
                           f"{history[text[0]].iloc[0]!r}); every required column is numeric")
    steps = history["step"].to_numpy()
    if (steps[1:] < steps[:-1]).any():
        raise HistoryError(f"{where}: 'step' is not in increasing order")
    return history


FLOAT_FORMAT = "%.9g"   # every CSV table nht writes (histories, cells.csv): 9 significant digits


def history_csv(history: pd.DataFrame) -> str:
    """A history as CSV text in schema column order (:func:`ordered_columns`), floats as
    :data:`FLOAT_FORMAT`: how every domain writes ``history.csv``."""
    return history[ordered_columns(history.columns)].to_csv(index=False, float_format=FLOAT_FORMAT)


def read_table(path) -> pd.DataFrame:
    """A CSV table, or :class:`HistoryError` naming the file when it is not one (empty, garbled)."""
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise HistoryError(f"{path}: not a readable CSV table ({type(err).__name__}: {err})") from None


def read_history(path) -> pd.DataFrame:
    """Read and check one ``history.csv``; :class:`HistoryError` naming the file when it is not a
    CSV table or does not follow the schema."""
    return check_history(read_table(path), str(path))
