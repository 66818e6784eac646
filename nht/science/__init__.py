"""The science layer: fits, intervals, predictions, separation, scorecard and science figures.

It reads only history tables (:mod:`nht.core.history`) and per-cell event records
(:mod:`nht.core.events`), whatever the domain. Entry point: :func:`nht.science.analyse.analyse_experiment`.
"""
