# The final aggregate: every experiment's summary (of any kind) merged into results/summary.json.
# With a norm intervention in the config, the modular cells' records too: the intervention's
# predicted vs measured delay shifts compare cells across experiments (nht.science.intervention).
INTERVENED = any(exp.get("intervention") for exp in config["experiments"].values())


rule summary:
    input:
        unpack(RC.inputs("summary",
                         summaries=[f"{R}/{name}/experiment_summary.json" for name in config["experiments"]],
                         cell_records=[p for e in experiments_of_kind("modular") for p in cell_files(e, "norms.json")]
                         if INTERVENED else [])),
    output:
        summary=SUMMARY,
        markdown=f"{R}/scorecard.md",
        html=report(f"{R}/scorecard.html", caption="../report/scorecard.rst", category="Scorecard"),
    params:
        nht=RC.tag,
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
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht summary --experiment-summaries {input.summaries:q} --out {output.summary:q}"
        " --out-markdown {output.markdown:q} --out-html {output.html:q} --cell-records {input.cell_records:q}"
