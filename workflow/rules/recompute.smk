# Content-based recompute (nht.recompute; docs/dvc.md). A stale or restorable job has the input
# .nht/force/<stage>, made here, so Snakemake runs it; its wrapper then restores or recomputes.
# When a run ends, what is not current is quarantined and DVC snapshots the results.
import time as _rc_time

_RC_STARTED = _rc_time.time()


localrules:
    nht_force,


rule nht_force:
    output:
        temp(".nht/force/{stage}"),
    wildcard_constraints:
        stage="[^/]+",
    params:
        why=lambda w: RC.reason(w.stage),
    message:
        "nht: {params.why}"
    log:
        "logs/nht_force/{stage}.log",
    benchmark:
        "benchmarks/rules/nht_force/{stage}.tsv"
    threads: 1
    resources:
        mem_mb=50,
        runtime=1,
    shell:
        "echo {params.why:q} > {log:q} && touch {output:q}"


def _rc_finish(log=None):
    from nht.recompute.publish import finish

    finish(config, RC.decisions, [RC.records_dir, RC.data_records_dir], _RC_STARTED)


onsuccess:
    _rc_finish()


onerror:
    _rc_finish()
