# Content-addressed recompute and shared artifacts (DVC under Snakemake); docs/dvc.md.
# Included by the Snakefile right after config validation and cell expansion. All logic lives
# in nht/dvc_sync.py. Off (and free) unless config `dvc.enabled` is true, or "auto" (default)
# and a .dvc/ directory exists. When on, before Snakemake builds its DAG: outputs of recorded,
# unchanged stages are re-timed so Snakemake sees them up to date (after touch, clone, pull);
# stages whose inputs, config values or code changed are made to rerun. After the run
# (success, failure, Ctrl-C or nothing to do), finished jobs are recorded in dvc.yaml/dvc.lock
# and DVC's cache, ready for `dvc push`.
import nht.dvc_sync as _nht_dvc

NHT_DVC = _nht_dvc.attach(workflow, config, cells=CELLS.values())
