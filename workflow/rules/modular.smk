# Per-cell norm extraction takes about a second: on a cluster it runs on the submitting node
# rather than as one batch job per cell.
localrules:
    extract_norms,


# Modular-arithmetic experiments: data -> train (per job) -> norms (per cell) -> fit, figures,
# experiment summary (per experiment).

rule make_modular_data:
    output:
        f"{D}/modular/{{dataset}}.npz",
    params:
        ds=lambda w: MODULAR_DATASETS[w.dataset],
    conda:
        "../envs/nht.yaml"
    log:
        "logs/make_modular_data/{dataset}.log",
    benchmark:
        "benchmarks/rules/make_modular_data/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python -m nht make-data --op {params.ds[op]} --p {params.ds[p]}"
        " --train-frac {params.ds[train_frac]} --split-seed {params.ds[split_seed]}"
        " --out {output} > {log} 2>&1"


rule train_modular:
    input:
        dataset=lambda w: f"{D}/modular/{JOBS[w.job].cells[0].dataset_id}.npz",
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        history=f"{R}/{{experiment}}/jobs/{{job}}/history.csv",
        meta=f"{R}/{{experiment}}/jobs/{{job}}/meta.json",
    params:
        job=lambda w: json.dumps(job_spec(w.job)),
        checkpoint=lambda w: P.fill(P.JOB_CHECKPOINT, config, experiment=w.experiment, job=w.job),
        device=config["device"],
        flags=("" if config["deterministic"] else " --nondeterministic")
        + f" --precision {config['precision']}",
    conda:
        "../envs/nht.yaml"
    log:
        "logs/train_modular/{experiment}/{job}.log",
    benchmark:
        "benchmarks/rules/train_modular/{experiment}/{job}.tsv"
    threads: job_setting("threads")
    priority: job_priority
    resources:
        mem_mb=job_setting("mem_mb"),
        runtime=job_setting("runtime_min"),
        gpu=job_setting("gpus"),
    shell:
        "python -m nht train --job {params.job:q} --dataset {input.dataset}"
        " --history {output.history} --meta {output.meta} --checkpoint {params.checkpoint}"
        " --device {params.device} --threads {threads}{params.flags} > {log} 2>&1"


rule extract_norms:
    input:
        history=lambda w: f"{R}/{w.experiment}/jobs/{JOB_OF[w.cell]}/history.csv",
        meta=lambda w: f"{R}/{w.experiment}/jobs/{JOB_OF[w.cell]}/meta.json",
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        history=f"{R}/{{experiment}}/cells/{{cell}}/history.csv",
        norms=f"{R}/{{experiment}}/cells/{{cell}}/norms.json",
    params:
        settings=lambda w: json.dumps(CELLS[w.cell].settings),
    conda:
        "../envs/nht.yaml"
    log:
        "logs/extract_norms/{experiment}/{cell}.log",
    benchmark:
        "benchmarks/rules/extract_norms/{experiment}/{cell}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python -m nht norms --job-history {input.history} --job-meta {input.meta} --cell {wildcards.cell}"
        " --settings {params.settings:q} --out-history {output.history} --out-norms {output.norms}"
        " > {log} 2>&1"


rule fit_modular:
    input:
        norms=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/norms.json" for c in cells_of(w.experiment)],
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        fit=f"{R}/{{experiment}}/fit.json",
        table=f"{R}/{{experiment}}/cells.csv",
    conda:
        "../envs/nht.yaml"
    log:
        "logs/fit_modular/{experiment}.log",
    benchmark:
        "benchmarks/rules/fit_modular/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m nht fit --norms {input.norms} --out-fit {output.fit} --out-table {output.table} > {log} 2>&1"


MODULAR_FIGURES = [f"{name}.{ext}" for name in ("curves", "delay_law", "regimes") for ext in ("png", "pdf")]


rule figures_modular:
    input:
        table=f"{R}/{{experiment}}/cells.csv",
        fit=f"{R}/{{experiment}}/fit.json",
        histories=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/history.csv" for c in cells_of(w.experiment)],
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        report(f"{R}/{{experiment}}/figures/curves.png", caption="../report/curves.rst",
               category="Curves", subcategory="{experiment}"),
        f"{R}/{{experiment}}/figures/curves.pdf",
        report(f"{R}/{{experiment}}/figures/delay_law.png", caption="../report/delay_law.rst",
               category="Delay law", subcategory="{experiment}"),
        f"{R}/{{experiment}}/figures/delay_law.pdf",
        report(f"{R}/{{experiment}}/figures/regimes.png", caption="../report/regimes.rst",
               category="Regimes", subcategory="{experiment}"),
        f"{R}/{{experiment}}/figures/regimes.pdf",
    params:
        out_dir=f"{R}/{{experiment}}/figures",
        max_cells=lambda w: config["experiments"][w.experiment]["figure_cells_max"],
    conda:
        "../envs/nht.yaml"
    log:
        "logs/figures_modular/{experiment}.log",
    benchmark:
        "benchmarks/rules/figures_modular/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m nht figures --cells-table {input.table} --histories {input.histories} --fit {input.fit}"
        " --out-dir {params.out_dir} --max-cells {params.max_cells} > {log} 2>&1"


SCIENCE_REPORT = {
    "delay_law_bootstrap": ("Delay law", "../report/delay_law_bootstrap.rst"),
    "prospective": ("Prospective prediction", "../report/prospective.rst"),
    "norm_fits": ("Curves", "../report/norm_fits.rst"),
    "decay_rate": ("Decay rate", "../report/decay_rate.rst"),
    "clean_separation": ("Clean norm separation", "../report/clean_separation.rst"),
}


rule science_modular:
    input:
        norms=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/norms.json" for c in cells_of(w.experiment)],
        histories=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/history.csv" for c in cells_of(w.experiment)],
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        science=f"{R}/{{experiment}}/science.json",
        figures=[
            report(f"{R}/{{experiment}}/figures/{stem}.png", caption=cap, category=cat,
                   subcategory="{experiment}")
            for stem, (cat, cap) in SCIENCE_REPORT.items()
        ]
        + [f"{R}/{{experiment}}/figures/{stem}.pdf" for stem in SCIENCE_REPORT],
    params:
        figure_dir=f"{R}/{{experiment}}/figures",
    conda:
        "../envs/nht.yaml"
    log:
        "logs/science_modular/{experiment}.log",
    benchmark:
        "benchmarks/rules/science_modular/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m nht science --norms {input.norms} --histories {input.histories} --out {output.science}"
        " --figure-dir {params.figure_dir} > {log} 2>&1"


rule experiment_summary_modular:
    input:
        fit=f"{R}/{{experiment}}/fit.json",
        science=f"{R}/{{experiment}}/science.json",
        figures=[f"{R}/{{experiment}}/figures/{name}" for name in MODULAR_FIGURES],
        metas=lambda w: [f"{R}/{w.experiment}/jobs/{j.id}/meta.json" for j in jobs_of(w.experiment)],
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        f"{R}/{{experiment}}/experiment_summary.json",
    params:
        settings=lambda w: json.dumps(config["experiments"][w.experiment]),
    conda:
        "../envs/nht.yaml"
    log:
        "logs/experiment_summary_modular/{experiment}.log",
    benchmark:
        "benchmarks/rules/experiment_summary_modular/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    shell:
        "python -m nht experiment-summary --experiment {wildcards.experiment} --settings {params.settings:q}"
        " --fit {input.fit} --figures {input.figures} --job-metas {input.metas} --science {input.science}"
        " --out {output} > {log} 2>&1"
