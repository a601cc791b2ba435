# Training (select on validation) and the one test evaluation of the selected checkpoint.
# `rasa train --resume` continues from checkpoints/{experiment}/checkpoint_last.pt after a
# preemption (exit 75, requeued by SLURM); metrics.json is written last and marks a done run.


wildcard_constraints:
    experiment=regex(PLAN.runs),


rule train:
    input:
        annotations=lambda w: PLAN.runs[w.experiment].annotations,
        tokens=lambda w: PLAN.runs[w.experiment].tokens,
    output:
        done="checkpoints/{experiment}/metrics.json",
    log:
        "logs/train/{experiment}.log",
    conda:
        ENV
    threads: lambda w: run_resources(w, "threads")
    resources:
        mem_mb=lambda w: run_resources(w, "mem_mb"),
        runtime=lambda w: run_resources(w, "runtime"),
        gpu=lambda w: run_resources(w, "gpus"),
    params:
        cli=RASA,
        params_file=PARAMS,
        out="checkpoints/{experiment}",
    shell:
        "{params.cli} train --experiment {wildcards.experiment} --params {params.params_file} "
        "--annotations {input.annotations} --tokens {input.tokens} "
        "--out {params.out} --resume --no-progress > {log} 2>&1"


rule evaluate:
    input:
        done="checkpoints/{experiment}/metrics.json",
        annotations=lambda w: PLAN.runs[w.experiment].annotations,
        tokens=lambda w: PLAN.runs[w.experiment].tokens,
    output:
        metrics="results/metrics/{experiment}.json",
        topk="results/topk/{experiment}.json",
    log:
        "logs/evaluate/{experiment}.log",
    conda:
        ENV
    threads: lambda w: run_resources(w, "threads")
    resources:
        mem_mb=lambda w: run_resources(w, "mem_mb"),
        runtime=lambda w: run_resources(w, "runtime"),
        gpu=lambda w: run_resources(w, "gpus"),
    params:
        cli=RASA,
        params_file=PARAMS,
        checkpoint="checkpoints/{experiment}/checkpoint_best.pt",
    shell:
        "{params.cli} evaluate --checkpoint {params.checkpoint} --annotations {input.annotations} "
        "--tokens {input.tokens} --split test "
        "--out {output.metrics} --topk-out {output.topk} > {log} 2>&1"
