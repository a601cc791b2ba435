# Report: LaTeX tables beside the paper's numbers, figures and an index, in results/<suite>/.
# Assembling (ASSEMBLE): from the committed results and reports of the suite's parts instead of
# its training runs' folders; the report links each run's curves in the part report that drew it.


rule report:
    input:
        metrics=[m for m, _ in PLAN.evaluations],
        topk=[t for _, t in PLAN.evaluations],
        runs=[] if ASSEMBLE else [f"{r.train_dir}/metrics.json" for r in PLAN.runs.values()],
        parts=[f"{d}/README.md" for d in PARTS],
        # Fig. 5 of every dataset's runs (training made them; assembling makes them for it)
        datasets=[d.annotations for d in PLAN.datasets.values()] if ASSEMBLE else [],
        annotations=PLAN.report_annotations,
        # the pre-training the runs start from: its held-out figures and curves
        pretrained=PLAN.pretrain.outputs[2] if PLAN.pretrain else [],
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
        runs=(
            f"--parts {' '.join(PARTS)}"
            if ASSEMBLE
            else f"--runs {' '.join(r.train_dir for r in PLAN.runs.values())}"
        ),
        pretrained=(f"--pretrained {PLAN.pretrain.export}" if PLAN.pretrain else ""),
    shell:
        "{params.cli} report --results {input.metrics} {input.topk} --out {params.out} "
        "--params {params.params_file} --suite {params.suite} --annotations {input.annotations} "
        "{params.runs} {params.pretrained} > {log} 2>&1"
