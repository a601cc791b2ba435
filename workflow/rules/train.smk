# Training (select on validation) and the one test evaluation of the selected checkpoint.
# `rasa train --resume=auto` continues from checkpoints/{experiment}/checkpoint_last.pt after a
# preemption (exit 75, requeued by SLURM) when it was written with the same config and data;
# otherwise (params changed) it moves the old run aside to checkpoints/{experiment}.stale-<time>/
# and starts afresh. metrics.json is written last and marks a done run.


wildcard_constraints:
    experiment=regex(PLAN.runs),


rule train:
    input:
        annotations=lambda w: PLAN.runs[w.experiment].annotations,
        tokens=lambda w: PLAN.runs[w.experiment].tokens,
        generator=lambda w: PLAN.runs[w.experiment].generator or [],
        # the starting weights (backbones.<name>.pretrained): a local file or fetched
        weights=lambda w: PLAN.runs[w.experiment].weights or [],
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
        "--out {params.out} --resume=auto --no-progress > {log} 2>&1"


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


rule evaluate_transfer:
    # Table 7: the selected checkpoint on another dataset's test split (domain generalisation)
    input:
        done="checkpoints/{experiment}/metrics.json",
        annotations=lambda w: transfer(w).annotations,
        tokens=lambda w: transfer(w).tokens,
    output:
        metrics="results/metrics/{experiment}--on-{target}.json",
        topk="results/topk/{experiment}--on-{target}.json",
    log:
        "logs/evaluate/{experiment}--on-{target}.log",
    wildcard_constraints:
        target=regex({t.target for t in PLAN.transfers.values()}),
    conda:
        ENV
    threads: lambda w: run_resources(w, "threads")
    resources:
        mem_mb=lambda w: run_resources(w, "mem_mb"),
        runtime=lambda w: run_resources(w, "runtime"),
        gpu=lambda w: run_resources(w, "gpus"),
    params:
        cli=RASA,
        checkpoint="checkpoints/{experiment}/checkpoint_best.pt",
    shell:
        "{params.cli} evaluate --checkpoint {params.checkpoint} --annotations {input.annotations} "
        "--tokens {input.tokens} --split test --dataset {wildcards.target} "
        "--out {output.metrics} --topk-out {output.topk} > {log} 2>&1"
