# The science layer of every experiment, whatever its domain: it reads only the cells' histories
# (nht.core.history) and event records (nht.core.events, norms.json).
#
#   science   all cells' norms.json + history.csv -> {R}/<experiment>/science.json + science figures


SCIENCE_REPORT = {
    "delay_law_bootstrap": ("Delay law", "../report/delay_law_bootstrap.rst"),
    "prospective": ("Prospective prediction", "../report/prospective.rst"),
    "norm_fits": ("Curves", "../report/norm_fits.rst"),
    "decay_rate": ("Decay rate", "../report/decay_rate.rst"),
    "clean_separation": ("Clean norm separation", "../report/clean_separation.rst"),
}
SCIENCE = RC.rule(
    "science",
    exists=lambda w: w.experiment in config["experiments"],
    inputs=lambda w: {"norms": cell_files(w.experiment, "norms.json"),
                      "histories": cell_files(w.experiment, "history.csv")},
    outputs={"science": f"{R}/{{experiment}}/science.json",
             **{f"{stem}_png": report(f"{R}/{{experiment}}/figures/{stem}.png", caption=cap, category=cat,
                                      subcategory="{experiment}")
                for stem, (cat, cap) in SCIENCE_REPORT.items()},
             **{f"{stem}_pdf": f"{R}/{{experiment}}/figures/{stem}.pdf" for stem in SCIENCE_REPORT}},
    params={"figure_dir": lambda w: f"{R}/{w.experiment}/figures"},
)


rule science:
    input:
        unpack(SCIENCE.input),
    wildcard_constraints:
        experiment=experiment_pattern(),
    output:
        **SCIENCE.output,
    params:
        **SCIENCE.params,
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


