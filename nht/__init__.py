"""nht: workflow-managed measurements of the Norm-Hierarchy Transition (NHT).

All pipeline logic lives in this package; the Snakemake rules under ``workflow/`` are thin
wrappers around the ``python -m nht <command>`` entry points defined in :mod:`nht.cli`.

Conventions used everywhere in the package:

* ``V`` always means the *squared* L2 norm of parameters, ``V = ||theta||^2`` (sum of squares).
* Training time is counted in optimizer *steps* (one step = one parameter update) in every domain:
  every history's ``step`` column, ``T_fit``, ``T_transition``. Image histories and records also
  give the epoch (``epoch``, ``epoch_fit``, ``epoch_transition``); column names say which.
"""

__version__ = "0.1.0"
