# Modular-arithmetic experiments: data -> train (per job) -> norms (per cell) -> fit, science,
# figures, experiment summary (per experiment). Inputs, outputs and params come from the rule's
# handle in nht.recompute (registered just above each rule); every path is quoted in the shell.

MODULAR_DATA = RC.rule(
    "make_modular_data",
    exists=lambda w: w.dataset in MODULAR_DATASETS,
    inputs={},
    outputs={"data": f"{D}/modular/{{dataset}}.npz"},
    params={"ds": lambda w: MODULAR_DATASETS[w.dataset]},
)


rule make_modular_data:
    input:
        unpack(MODULAR_DATA.input),
    output:
        **MODULAR_DATA.output,
    params:
        **MODULAR_DATA.params,
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
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht make-data --op {params.ds[op]:q} --p {params.ds[p]:q}"
        " --train-frac {params.ds[train_frac]:q} --split-seed {params.ds[split_seed]:q}"
        " --out {output.data:q}"


TRAIN_MODULAR = RC.rule(
    "train_modular",
    exists=lambda w: w.job in JOBS and JOBS[w.job].experiment == w.experiment,
    inputs=lambda w: {"dataset": f"{D}/modular/{JOBS[w.job].cells[0].dataset_id}.npz"},
    outputs={"history": f"{R}/{{experiment}}/jobs/{{job}}/history.csv",
             "meta": f"{R}/{{experiment}}/jobs/{{job}}/meta.json"},
    params={
        "job": lambda w: json.dumps(job_spec(w.job)),
        "checkpoint": lambda w: P.fill(P.JOB_CHECKPOINT, config, experiment=w.experiment, job=w.job),
        "device": config["device"],
        "deterministic": "--deterministic" if config["deterministic"] else "--nondeterministic",
        "precision": config["precision"],
    },
    scheduling={"scheduling": lambda w: job_scheduling_arg(w.job)},
)


rule train_modular:
    input:
        unpack(TRAIN_MODULAR.input),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        **TRAIN_MODULAR.output,
    params:
        **TRAIN_MODULAR.params,
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
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht train --job {params.job:q} --dataset {input.dataset:q}"
        " --history {output.history:q} --meta {output.meta:q} --checkpoint {params.checkpoint:q}"
        " --device {params.device:q} --threads {threads} {params.deterministic}"
        " --precision {params.precision:q} --scheduling {params.scheduling:q}"


EXTRACT_NORMS = RC.rule(
    "extract_norms",
    exists=lambda w: w.cell in CELLS and CELLS[w.cell].experiment == w.experiment and CELLS[w.cell].kind == "modular",
    inputs=lambda w: {"history": f"{R}/{w.experiment}/jobs/{JOB_OF[w.cell]}/history.csv",
                      "meta": f"{R}/{w.experiment}/jobs/{JOB_OF[w.cell]}/meta.json"},
    outputs={"history": f"{R}/{{experiment}}/cells/{{cell}}/history.csv",
             "norms": f"{R}/{{experiment}}/cells/{{cell}}/norms.json"},
    params={"settings": lambda w: json.dumps(CELLS[w.cell].run_settings)},
)


rule extract_norms:
    input:
        unpack(EXTRACT_NORMS.input),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        **EXTRACT_NORMS.output,
    params:
        **EXTRACT_NORMS.params,
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
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht norms --job-history {input.history:q} --meta {input.meta:q}"
        " --kind modular --cell {wildcards.cell:q} --settings {params.settings:q} --out-history {output.history:q}"
        " --out-norms {output.norms:q}"


FIT_MODULAR = RC.rule(
    "fit_modular",
    exists=lambda w: w.experiment in experiments_of_kind("modular"),
    inputs=lambda w: {"norms": cell_files(w.experiment, "norms.json")},
    outputs={"fit": f"{R}/{{experiment}}/fit.json", "table": f"{R}/{{experiment}}/cells.csv"},
)


rule fit_modular:
    input:
        unpack(FIT_MODULAR.input),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        **FIT_MODULAR.output,
    params:
        **FIT_MODULAR.params,
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
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht fit --norms {input.norms:q} --out-fit {output.fit:q}"
        " --out-table {output.table:q}"


MODULAR_FIGURES = {f"{name}_{ext}": f"{R}/{{experiment}}/figures/{name}.{ext}"
                   for name in ("curves", "delay_law", "regimes") for ext in ("png", "pdf")}
FIGURES_MODULAR = RC.rule(
    "figures_modular",
    exists=lambda w: w.experiment in experiments_of_kind("modular"),
    inputs=lambda w: {"table": f"{R}/{w.experiment}/cells.csv", "fit": f"{R}/{w.experiment}/fit.json",
                      "histories": cell_files(w.experiment, "history.csv")},
    outputs={k: (report(v, caption=f"../report/{k[:-4]}.rst", category=k[:-4].replace("_", " ").title(),
                        subcategory="{experiment}") if k.endswith("png") else v)
             for k, v in MODULAR_FIGURES.items()},
    params={"out_dir": lambda w: f"{R}/{w.experiment}/figures",
            "cells": lambda w: [c.id for c in cells_of(w.experiment)],
            "max_cells": lambda w: config["experiments"][w.experiment]["figure_cells_max"]},
)


rule figures_modular:
    input:
        unpack(FIGURES_MODULAR.input),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        **FIGURES_MODULAR.output,
    params:
        **FIGURES_MODULAR.params,
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
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht figures --cells-table {input.table:q} --histories {input.histories:q}"
        " --cells {params.cells:q} --fit {input.fit:q} --out-dir {params.out_dir:q} --max-cells {params.max_cells}"


EXPERIMENT_SUMMARY_MODULAR = RC.rule(
    "experiment_summary_modular",
    exists=lambda w: w.experiment in experiments_of_kind("modular"),
    inputs=lambda w: {"fit": f"{R}/{w.experiment}/fit.json", "science": f"{R}/{w.experiment}/science.json",
                      "figures": [p.format(experiment=w.experiment) for p in MODULAR_FIGURES.values()],
                      "metas": [f"{R}/{w.experiment}/jobs/{j.id}/meta.json" for j in jobs_of(w.experiment)]},
    outputs={"summary": f"{R}/{{experiment}}/experiment_summary.json"},
    params={"config": lambda w: json.dumps(config["experiments"][w.experiment])},
)


rule experiment_summary_modular:
    input:
        unpack(EXPERIMENT_SUMMARY_MODULAR.input),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        **EXPERIMENT_SUMMARY_MODULAR.output,
    params:
        **EXPERIMENT_SUMMARY_MODULAR.params,
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
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht experiment-summary --kind modular"
        " --experiment {wildcards.experiment:q} --config {params.config:q} --fit {input.fit:q} --figures {input.figures:q}"
        " --job-metas {input.metas:q} --science {input.science:q} --out {output.summary:q}"
