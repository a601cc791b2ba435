# Report: LaTeX tables beside the paper's numbers, figures, and results/README.md.


rule report:
    input:
        metrics=[r.metrics for r in PLAN.runs.values()],
        topk=[r.topk for r in PLAN.runs.values()],
        annotations=PLAN.report_annotations,
    output:
        index="results/README.md",
        comparison="results/comparison.csv",
        tables=directory("results/tables"),
        figures=directory("results/figures"),
    log:
        "logs/report.log",
    conda:
        ENV
    params:
        cli=RASA,
        params_file=PARAMS,
        suite=PLAN.suite,
    shell:
        "{params.cli} report --results results/metrics results/topk --out results "
        "--params {params.params_file} --suite {params.suite} --annotations {input.annotations} "
        "> {log} 2>&1"
