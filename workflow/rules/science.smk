# The per-cell events and the science layer of every experiment, whatever its domain: they read
# only the training jobs' histories (nht.core.history) and the cells' event records (nht.core.events).
#
#   extract_norms  one cell's rows of its job's history + meta -> {R}/<experiment>/cells/<cell>/{history.csv,norms.json}
#   science        all cells' norms.json + history.csv -> {R}/<experiment>/science.json + science figures


rule extract_norms:
    input:
        unpack(RC.inputs("extract_norms",
                         history=lambda w: f"{R}/{w.experiment}/jobs/{JOB_OF[w.cell]}/history.csv",
                         meta=lambda w: f"{R}/{w.experiment}/jobs/{JOB_OF[w.cell]}/meta.json")),
    wildcard_constraints:
        experiment=experiment_pattern(),
    output:
        history=f"{R}/{{experiment}}/cells/{{cell}}/history.csv",
        norms=f"{R}/{{experiment}}/cells/{{cell}}/norms.json",
    params:
        kind=lambda w: CELLS[w.cell].kind,
        settings=lambda w: json.dumps(CELLS[w.cell].run_settings),
        nht=RC.tag,
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
        " --kind {params.kind:q} --cell {wildcards.cell:q} --settings {params.settings:q} --out-history {output.history:q}"
        " --out-norms {output.norms:q}"


rule science:
    input:
        unpack(RC.inputs("science",
                         norms=lambda w: cell_files(w.experiment, "norms.json"),
                         histories=lambda w: cell_files(w.experiment, "history.csv"))),
    wildcard_constraints:
        experiment=experiment_pattern(),
    output:
        science=f"{R}/{{experiment}}/science.json",
        delay_law_bootstrap_png=report(f"{R}/{{experiment}}/figures/delay_law_bootstrap.png", caption="../report/delay_law_bootstrap.rst",
                                      category="Delay law", subcategory="{experiment}"),
        prospective_png=report(f"{R}/{{experiment}}/figures/prospective.png", caption="../report/prospective.rst",
                              category="Prospective prediction", subcategory="{experiment}"),
        norm_fits_png=report(f"{R}/{{experiment}}/figures/norm_fits.png", caption="../report/norm_fits.rst",
                            category="Curves", subcategory="{experiment}"),
        decay_rate_png=report(f"{R}/{{experiment}}/figures/decay_rate.png", caption="../report/decay_rate.rst",
                             category="Decay rate", subcategory="{experiment}"),
        clean_separation_png=report(f"{R}/{{experiment}}/figures/clean_separation.png", caption="../report/clean_separation.rst",
                                   category="Clean norm separation", subcategory="{experiment}"),
        delay_law_bootstrap_pdf=f"{R}/{{experiment}}/figures/delay_law_bootstrap.pdf",
        prospective_pdf=f"{R}/{{experiment}}/figures/prospective.pdf",
        norm_fits_pdf=f"{R}/{{experiment}}/figures/norm_fits.pdf",
        decay_rate_pdf=f"{R}/{{experiment}}/figures/decay_rate.pdf",
        clean_separation_pdf=f"{R}/{{experiment}}/figures/clean_separation.pdf",
    params:
        figure_dir=lambda w: f"{R}/{w.experiment}/figures",
        nht=RC.tag,
    conda:
        "../envs/nht.yaml"
    log:
        "logs/science/{experiment}.log",
    benchmark:
        "benchmarks/rules/science/{experiment}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m nht.recompute {params.nht:q} {log:q} {input:q} -- python -m nht science --norms {input.norms:q} --histories {input.histories:q}"
        " --out {output.science:q} --figure-dir {params.figure_dir:q}"
