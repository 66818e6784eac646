"""Image shortcut experiments (issue 4): datasets decoded once to uint8 arrays, coloured-border
shortcut injection, SimpleCNN / ResNet18, a resumable per-cell trainer that records accuracies on
clean / aligned / conflicting / shortcut-only test sets and the squared parameter norm
V = ||theta||^2 per epoch, figures and the per-experiment ``experiment_summary.json``.

Command line: ``python -m nht image-{fetch,shortcut,train,figures,summary}`` (:mod:`nht.stages`); Snakemake rules in
``workflow/rules/images.smk``; config keys in ``workflow/schemas/image_experiment.schema.yaml``.
"""
