# The science layer of every experiment, whatever its domain: it reads only the cells' histories
# (nht.core.history) and event records (nht.core.events, norms.json).
#
#   science   all cells' norms.json + history.csv -> {R}/<experiment>/science.json + science figures


def science_figure(stem, ext):
    """One figure of the science stage; the PNGs go into Snakemake's report."""
    category, caption = {
        "delay_law_bootstrap": ("Delay law", "../report/delay_law_bootstrap.rst"),
        "prospective": ("Prospective prediction", "../report/prospective.rst"),
        "norm_fits": ("Curves", "../report/norm_fits.rst"),
        "decay_rate": ("Decay rate", "../report/decay_rate.rst"),
        "clean_separation": ("Clean norm separation", "../report/clean_separation.rst"),
    }[stem]
    path = f"{R}/{{experiment}}/figures/{stem}.{ext}"
    return report(path, caption=caption, category=category, subcategory="{experiment}") if ext == "png" else path


rule science:
    input:
        unpack(RC.inputs("science",
                         norms=lambda w: cell_files(w.experiment, "norms.json"),
                         histories=lambda w: cell_files(w.experiment, "history.csv"))),
    wildcard_constraints:
        experiment=experiment_pattern(),
    output:
        science=f"{R}/{{experiment}}/science.json",
        delay_law_bootstrap_png=science_figure("delay_law_bootstrap", "png"),
        prospective_png=science_figure("prospective", "png"),
        norm_fits_png=science_figure("norm_fits", "png"),
        decay_rate_png=science_figure("decay_rate", "png"),
        clean_separation_png=science_figure("clean_separation", "png"),
        delay_law_bootstrap_pdf=science_figure("delay_law_bootstrap", "pdf"),
        prospective_pdf=science_figure("prospective", "pdf"),
        norm_fits_pdf=science_figure("norm_fits", "pdf"),
        decay_rate_pdf=science_figure("decay_rate", "pdf"),
        clean_separation_pdf=science_figure("clean_separation", "pdf"),
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
