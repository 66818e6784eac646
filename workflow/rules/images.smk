# Image shortcut experiments (issues 4, 21). Included by the Snakefile, which defines config (validated),
# CELLS, JOBS, JOB_OF, PY, R, D and experiments_of_kind(). Every rule calls one `python -m nht` stage
# and declares what it reads, writes and is run with as modular.smk does (RC.inputs, params.nht).
#
#   image_fetch               dataset -> {D}/image/raw/<fetch id>.npz             (decoded once, uint8)
#   image_shortcut            raw -> {D}/image/<experiment>/<rho,border,seed>-<hash>.npz  (borders + 4 test sets)
#   image_train               one job of cells (batch_over, max_cells_per_job; stacked in one process)
#                               -> {R}/<experiment>/jobs/<job>/{history.csv,meta.json}
#   (extract_norms, workflow/rules/science.smk: one cell's rows of its job's history ->
#    {R}/<experiment>/cells/<cell>/{history.csv,norms.json}, the per-cell stage of every domain)
#   image_figures             all cells -> {R}/<experiment>/figures/*.png
#   (science, workflow/rules/science.smk: all cells -> {R}/<experiment>/science.json, as for modular)
#   image_experiment_summary  all cells' norms.json + figures + science -> {R}/<experiment>/experiment_summary.json, cells.csv


include: "images_common.smk"


rule image_fetch:
    input:
        unpack(RC.inputs("image_fetch")),
    output:
        raw=f"{D}/image/raw/{{fetch}}.npz",
    params:
        spec=lambda w: _img_json.dumps(IMAGE_FETCH[w.fetch], sort_keys=True, default=str),
        nht=RC.tag,
    conda:
        "../envs/nht.yaml"
    log:
        "logs/image_fetch/{fetch}.log",
    benchmark:
        "benchmarks/rules/image_fetch/{fetch}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht image-fetch --spec {params.spec:q} --out {output.raw:q}"


rule image_shortcut:
    input:
        unpack(RC.inputs("image_shortcut", raw=lambda w: f"{D}/image/raw/{_img_fetch_id(w.experiment)}.npz")),
    output:
        data=f"{D}/image/{{experiment}}/{{shortcut}}.npz",
    params:
        spec=lambda w: _img_json.dumps(config["experiments"][w.experiment]["dataset"], sort_keys=True, default=str),
        rho=lambda w: IMAGE_SHORTCUTS[(w.experiment, w.shortcut)][0],
        border=lambda w: IMAGE_SHORTCUTS[(w.experiment, w.shortcut)][1],
        seed=lambda w: IMAGE_SHORTCUTS[(w.experiment, w.shortcut)][2],
        nht=RC.tag,
    wildcard_constraints:
        experiment=_IMG_EXP_RE,
    conda:
        "../envs/nht.yaml"
    log:
        "logs/image_shortcut/{experiment}/{shortcut}.log",
    benchmark:
        "benchmarks/rules/image_shortcut/{experiment}/{shortcut}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht image-shortcut --raw {input.raw:q} --spec {params.spec:q} --rho {params.rho:q}"
        " --border {params.border:q} --seed {params.seed:q} --out {output.data:q}"


rule image_train:
    input:
        unpack(RC.inputs("image_train", data=lambda w: _img_job_data(w.job))),
    output:
        history=f"{R}/{{experiment}}/jobs/{{job}}/history.csv",
        meta=f"{R}/{{experiment}}/jobs/{{job}}/meta.json",
    params:
        job=lambda w: _img_json.dumps(_img_job_spec(w.job), sort_keys=True, default=str),
        checkpoint=lambda w: f"{R}/{w.experiment}/jobs/{w.job}/checkpoint.pt",
        device=config.get("device", "auto"),
        det="" if config.get("deterministic", True) else "--nondeterministic",
        precision=config.get("precision", "fp32"),
        scheduling=lambda w: _img_json.dumps(job_scheduling(JOBS[w.job].cells), sort_keys=True),
        nht=RC.tag,
    wildcard_constraints:
        experiment=_IMG_EXP_RE,
        job=_IMG_JOB_RE,
    conda:
        "../envs/nht.yaml"
    log:
        "logs/image_train/{experiment}/{job}.log",
    benchmark:
        "benchmarks/rules/image_train/{experiment}/{job}.tsv"
    threads: lambda w: _img_exp_threads(w.experiment)
    resources:
        mem_mb=lambda w: config["experiments"][w.experiment]["mem_mb"],
        runtime=lambda w: config["experiments"][w.experiment]["runtime_min"],
        gpu=lambda w: config["experiments"][w.experiment]["gpus"],
    shell:
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht image-train --job {params.job:q}"
        " --data {input.data:q} --history {output.history:q} --meta {output.meta:q} --checkpoint {params.checkpoint:q}"
        " --device {params.device:q} --threads {threads} {params.det} --precision {params.precision:q}"
        " --scheduling {params.scheduling:q}"


# The per-cell stage of every domain (python -m nht norms, as extract_norms in modular.smk): the
# cell's rows of its job's history and its event record. A rule of its own because the modular
# rule is constrained to modular experiments and reads the modular job table (JOB_OF).
rule image_figures:
    input:
        unpack(RC.inputs("image_figures",
                         norms=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/norms.json" for c in IMAGE_CELLS[w.experiment]],
                         history=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/history.csv" for c in IMAGE_CELLS[w.experiment]])),
    output:
        test_acc_vs_rho=report(f"{R}/{{experiment}}/figures/test_acc_vs_rho.png", caption="../report/images_test_acc_vs_rho.rst", category="image"),
        norm_curves=report(f"{R}/{{experiment}}/figures/norm_curves.png", caption="../report/images_norm_curves.rst", category="image"),
        phase_diagram=report(f"{R}/{{experiment}}/figures/phase_diagram.png", caption="../report/images_phase_diagram.rst", category="image"),
        layer_norms=report(f"{R}/{{experiment}}/figures/layer_norms.png", caption="../report/images_layer_norms.rst", category="image"),
    params:
        config=lambda w: _img_json.dumps(_img_without_scheduling(w.experiment), sort_keys=True, default=str),
        outdir=lambda w: f"{R}/{w.experiment}/figures",
        nht=RC.tag,
    wildcard_constraints:
        experiment=_IMG_EXP_RE,
    conda:
        "../envs/nht.yaml"
    log:
        "logs/image_figures/{experiment}.log",
    benchmark:
        "benchmarks/rules/image_figures/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht image-figures --norms {input.norms:q}"
        " --histories {input.history:q} --out-dir {params.outdir:q}"
        " --config {params.config:q}"


rule image_experiment_summary:
    input:
        unpack(RC.inputs("image_experiment_summary",
                         norms=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/norms.json" for c in IMAGE_CELLS[w.experiment]],
                         metas=lambda w: [f"{R}/{w.experiment}/jobs/{j}/meta.json" for j in _img_jobs_of(w.experiment)],
                         figures=lambda w: expand(rules.image_figures.output, experiment=w.experiment),
                         science=lambda w: f"{R}/{w.experiment}/science.json")),
    output:
        summary=f"{R}/{{experiment}}/experiment_summary.json",
        table=f"{R}/{{experiment}}/cells.csv",
    params:
        config=lambda w: _img_json.dumps(config["experiments"][w.experiment], sort_keys=True, default=str),
        nht=RC.tag,
    wildcard_constraints:
        experiment=_IMG_EXP_RE,
    conda:
        "../envs/nht.yaml"
    log:
        "logs/image_experiment_summary/{experiment}.log",
    benchmark:
        "benchmarks/rules/image_experiment_summary/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht experiment-summary --kind image"
        " --experiment {wildcards.experiment:q} --norms {input.norms:q} --job-metas {input.metas:q}"
        " --figures {input.figures:q} --science {input.science:q} --config {params.config:q} --out {output.summary:q}"
        " --table {output.table:q}"
