"""Stage entry points: one module per pipeline stage, each with ``main(argv)``.

``python -m nht <stage> ...`` (see :mod:`nht.cli`) imports only the module of that stage, so a
stage's code set (what reruns it when edited, see :mod:`nht.core.fingerprint`) is exactly what it runs:
training never imports fitting, statistics, figures or the scorecard.
"""
