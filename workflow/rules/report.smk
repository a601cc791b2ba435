# Report: LaTeX tables beside the paper's numbers, figures and an index, in results/<suite>/.


rule report:
    input:
        metrics=[r.metrics for r in PLAN.runs.values()],
        topk=[r.topk for r in PLAN.runs.values()],
        annotations=PLAN.report_annotations,
    output:
        index=PLAN.report,
        comparison=f"{PLAN.report_dir}/comparison.csv",
        tables=directory(f"{PLAN.report_dir}/tables"),
        figures=directory(f"{PLAN.report_dir}/figures"),
    log:
        "logs/report.log",
    conda:
        ENV
    params:
        cli=RASA,
        params_file=PARAMS,
        suite=PLAN.suite,
        out=lambda w, output: os.path.dirname(output.index),
    shell:
        "{params.cli} report --results {input.metrics} {input.topk} --out {params.out} "
        "--params {params.params_file} --suite {params.suite} --annotations {input.annotations} "
        "> {log} 2>&1"
