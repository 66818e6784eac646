# Modular-arithmetic experiments: data -> train (per job) -> norms (per cell) -> fit, science,
# figures, experiment summary (per experiment). Each rule declares what it reads (input), writes
# (output) and is run with (params); nht's content-based recompute (docs/dvc.md) adds its decision
# in the input function (`RC.inputs`) and hands the job to its wrapper through `params.nht`
# (`python -m nht.recompute ... --`, which records what the job read, ran and wrote). Every path is
# quoted in the shell.


rule make_modular_data:
    input:
        unpack(RC.inputs("make_modular_data")),
    output:
        data=f"{D}/modular/{{dataset}}.npz",
    params:
        ds=lambda w: MODULAR_DATASETS[w.dataset],
        nht=RC.tag,
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


rule train_modular:
    input:
        unpack(RC.inputs("train_modular", dataset=lambda w: f"{D}/modular/{JOBS[w.job].cells[0].dataset_id}.npz")),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        history=f"{R}/{{experiment}}/jobs/{{job}}/history.csv",
        meta=f"{R}/{{experiment}}/jobs/{{job}}/meta.json",
    params:
        job=lambda w: json.dumps(job_spec(w.job)),
        checkpoint=lambda w: f"{R}/{w.experiment}/jobs/{w.job}/checkpoint.pt",
        device=config["device"],
        deterministic="--deterministic" if config["deterministic"] else "--nondeterministic",
        precision=config["precision"],
        kernel=config["optimizer_kernel"],
        scheduling=lambda w: job_scheduling_arg(w.job),
        nht=RC.tag,
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
        " --precision {params.precision:q} --optimizer-kernel {params.kernel:q} --scheduling {params.scheduling:q}"


rule fit_modular:
    input:
        unpack(RC.inputs("fit_modular", norms=lambda w: cell_files(w.experiment, "norms.json"))),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        fit=f"{R}/{{experiment}}/fit.json",
        table=f"{R}/{{experiment}}/cells.csv",
    params:
        nht=RC.tag,
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


rule figures_modular:
    input:
        unpack(RC.inputs("figures_modular",
                         table=lambda w: f"{R}/{w.experiment}/cells.csv",
                         histories=lambda w: cell_files(w.experiment, "history.csv"))),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        curves_png=report(f"{R}/{{experiment}}/figures/curves.png", caption="../report/curves.rst", category="Curves",
                          subcategory="{experiment}"),
        curves_pdf=f"{R}/{{experiment}}/figures/curves.pdf",
        regimes_png=report(f"{R}/{{experiment}}/figures/regimes.png", caption="../report/regimes.rst", category="Regimes",
                          subcategory="{experiment}"),
        regimes_pdf=f"{R}/{{experiment}}/figures/regimes.pdf",
    params:
        out_dir=lambda w: f"{R}/{w.experiment}/figures",
        cells=lambda w: [c.id for c in cells_of(w.experiment)],
        max_cells=lambda w: config["experiments"][w.experiment]["figure_cells_max"],
        nht=RC.tag,
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
        " --cells {params.cells:q} --out-dir {params.out_dir:q} --max-cells {params.max_cells}"


rule experiment_summary_modular:
    input:
        unpack(RC.inputs("experiment_summary_modular",
                         fit=lambda w: f"{R}/{w.experiment}/fit.json",
                         science=lambda w: f"{R}/{w.experiment}/science.json",
                         figures=lambda w: expand(rules.figures_modular.output, experiment=w.experiment),
                         metas=lambda w: [f"{R}/{w.experiment}/jobs/{j.id}/meta.json" for j in jobs_of(w.experiment)])),
    wildcard_constraints:
        experiment=experiment_pattern("modular"),
    output:
        summary=f"{R}/{{experiment}}/experiment_summary.json",
    params:
        config=lambda w: json.dumps(config["experiments"][w.experiment]),
        nht=RC.tag,
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
