# The final aggregate: every experiment's summary (of any kind) merged into results/summary.json.


rule summary:
    input:
        [f"{R}/{name}/experiment_summary.json" for name in config["experiments"]],
    output:
        summary=SUMMARY,
        markdown=P.fill("{results}/scorecard.md", config),
        html=report(P.fill("{results}/scorecard.html", config), caption="../report/scorecard.rst",
                    category="Scorecard"),
    params:
        paths=lambda w, input: json.dumps(dict(zip(config["experiments"], input))),
    conda:
        "../envs/nht.yaml"
    log:
        "logs/summary/summary.log",
    benchmark:
        "benchmarks/rules/summary/summary.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python -m nht summary --experiment-summaries {params.paths:q} --out {output.summary} > {log} 2>&1"
