# Image shortcut experiments (issue 4). Included by the Snakefile, which defines config (validated),
# CELLS, JOBS, JOB_OF, PY, R, D and experiments_of_kind(). Every rule calls one `nht.images` subcommand.
#
#   image_fetch               dataset -> {D}/image/raw/<fetch id>.npz             (decoded once, uint8)
#   image_shortcut            raw -> {D}/image/<experiment>/<rho,border,seed>-<hash>.npz  (borders + 4 test sets)
#   image_train               one cell -> {R}/<experiment>/cells/<cell>/{history.csv,norms.json}
#   image_figures             all cells -> {R}/<experiment>/figures/*.png
#   image_experiment_summary  all cells + figures -> {R}/<experiment>/experiment_summary.json, cells.csv


include: "images_common.smk"


rule image_fetch:
    output:
        f"{D}/image/raw/{{fetch}}.npz",
    params:
        spec=lambda w: _img_q(IMAGE_FETCH[w.fetch]),
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
        "python -m nht.images fetch --spec {params.spec} --out {output} > {log} 2>&1"


rule image_shortcut:
    input:
        lambda w: f"{D}/image/raw/{_img_fetch_id(w.experiment)}.npz",
    output:
        f"{D}/image/{{experiment}}/{{shortcut}}.npz",
    params:
        spec=lambda w: _img_q(config["experiments"][w.experiment]["dataset"]),
        rho=lambda w: IMAGE_SHORTCUTS[(w.experiment, w.shortcut)][0],
        border=lambda w: IMAGE_SHORTCUTS[(w.experiment, w.shortcut)][1],
        seed=lambda w: IMAGE_SHORTCUTS[(w.experiment, w.shortcut)][2],
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
        "python -m nht.images inject --raw {input} --spec {params.spec} --rho {params.rho} "
        "--border {params.border} --seed {params.seed} --out {output} > {log} 2>&1"


rule image_train:
    input:
        lambda w: f"{D}/image/{w.experiment}/{_img_shortcut_id(CELLS[w.cell])}.npz",
    output:
        history=f"{R}/{{experiment}}/cells/{{cell}}/history.csv",
        norms=f"{R}/{{experiment}}/cells/{{cell}}/norms.json",
    params:
        settings=lambda w: _img_q(_img_settings(CELLS[w.cell])),
        outdir=lambda w: f"{R}/{w.experiment}/cells/{w.cell}",
        device=config.get("device", "auto"),
        flags=("" if config.get("deterministic", True) else "--nondeterministic ")
        + ("--tf32" if config.get("precision", "fp32") == "tf32" else ""),
    wildcard_constraints:
        experiment=_IMG_EXP_RE,
        cell=_IMG_CELL_RE,
    conda:
        "../envs/nht.yaml"
    log:
        "logs/image_train/{experiment}/{cell}.log",
    benchmark:
        "benchmarks/rules/image_train/{experiment}/{cell}.tsv"
    threads: lambda w: _img_exp_threads(w.experiment)
    resources:
        mem_mb=lambda w: config["experiments"][w.experiment]["mem_mb"],
        runtime=lambda w: config["experiments"][w.experiment]["runtime_min"],
        gpu=lambda w: config["experiments"][w.experiment]["gpus"],
    shell:
        "python -m nht.images train --settings {params.settings} --data {input} --out {params.outdir} "
        "--cell {wildcards.cell} --device {params.device} --threads {threads} {params.flags} > {log} 2>&1"


rule image_figures:
    input:
        norms=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/norms.json" for c in IMAGE_CELLS[w.experiment]],
        history=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/history.csv" for c in IMAGE_CELLS[w.experiment]],
    output:
        report(f"{R}/{{experiment}}/figures/clean_acc_vs_rho.png",
               caption="../report/images_clean_acc_vs_rho.rst", category="image"),
        report(f"{R}/{{experiment}}/figures/norm_curves.png",
               caption="../report/images_norm_curves.rst", category="image"),
        report(f"{R}/{{experiment}}/figures/phase_diagram.png",
               caption="../report/images_phase_diagram.rst", category="image"),
        report(f"{R}/{{experiment}}/figures/layer_norms.png",
               caption="../report/images_layer_norms.rst", category="image"),
    params:
        config=lambda w: _img_q(config["experiments"][w.experiment]),
        outdir=lambda w: f"{R}/{w.experiment}/figures",
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
        "python -m nht.images figures --norms {input.norms} --out-dir {params.outdir} "
        "--config {params.config} > {log} 2>&1"


rule image_experiment_summary:
    input:
        norms=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/norms.json" for c in IMAGE_CELLS[w.experiment]],
        history=lambda w: [f"{R}/{w.experiment}/cells/{c.id}/history.csv" for c in IMAGE_CELLS[w.experiment]],
        figures=rules.image_figures.output,
    output:
        summary=f"{R}/{{experiment}}/experiment_summary.json",
        table=f"{R}/{{experiment}}/cells.csv",
    params:
        config=lambda w: _img_q(config["experiments"][w.experiment]),
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
        "python -m nht.images summarize --experiment {wildcards.experiment} --norms {input.norms} "
        "--figures {input.figures} --config {params.config} --out {output.summary} "
        "--table {output.table} > {log} 2>&1"
