# Content-based recompute (nht.recompute; docs/dvc.md). A stale or restorable job has the input
# .nht/force/<stage>/<digest>, made here, so Snakemake runs it; its wrapper then restores or
# recomputes. The digest is new for every new reason to rerun (nht.recompute.decide); making one
# removes the stage's older stamps.
# When a run ends, what is not current is quarantined and DVC snapshots the results.
localrules:
    nht_force,


rule nht_force:
    output:
        temp(".nht/force/{stage}/{digest}"),
    wildcard_constraints:
        stage="[^/]+",
        digest="[0-9a-f]+",
    params:
        why=lambda w: RC.reason(w.stage),
    message:
        "nht: {params.why}"
    conda:
        "../envs/nht.yaml"
    log:
        "logs/nht_force/{stage}/{digest}.log",
    benchmark:
        "benchmarks/rules/nht_force/{stage}/{digest}.tsv"
    threads: 1
    resources:
        mem_mb=50,
        runtime=1,
    shell:
        "echo {params.why:q} > {log:q} && touch {output:q}"
        " && find .nht/force/{wildcards.stage:q} logs/nht_force/{wildcards.stage:q}"
        " benchmarks/rules/nht_force/{wildcards.stage:q} -type f ! -name {wildcards.digest:q}'*' -delete 2>/dev/null || true"


onsuccess:
    recompute_finish()


onerror:
    recompute_finish()
