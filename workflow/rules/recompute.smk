# Content-based recompute (nht.recompute; docs/dvc.md). A stale or restorable job has the input
# .nht/force/<stage>, made here, so Snakemake runs it; its wrapper then restores or recomputes.
# When a run ends, what is not current is quarantined and DVC snapshots the results.
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
    conda:
        "../envs/nht.yaml"
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


onsuccess:
    recompute_finish()


onerror:
    recompute_finish()
