"""Domains: what differs between modular arithmetic and images (data, shortcut, models, one
training step and evaluation, domain figures and summary extras). Each domain's trainer plugs into
:mod:`nht.core.loop` and writes the one history schema of :mod:`nht.core.history`; everything after
the history (events, science, scorecard) is shared.
"""
