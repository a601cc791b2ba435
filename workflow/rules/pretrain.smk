# Pre-training (issue #12): the SynthPEDES corpus -> its token cache -> `rasa pretrain` -> the
# exported model in params' `pretrain.out` (model.safetensors, tokenizer.json, metrics.json).
# The export is committed: a fresh clone fine-tunes from it without pre-training again, so the
# inputs of `pretrain` are `ancient` (a checkout's file times say nothing). Rebuild it with
# `snakemake --forcerun pretrain` (or `dvc repro pretrain`, which reruns it when the content of
# a dependency changes). Only in the DAG when a run of the suite starts from the export.

if PLAN.pretrain:

    rule pretrain_corpus:
        output:
            annotations=PLAN.pretrain.corpus_outputs[0],
            images=directory(PLAN.pretrain.corpus_outputs[1]),
            meta=PLAN.pretrain.corpus_outputs[2],
        log:
            "logs/pretrain/corpus.log",
        conda:
            ENV
        threads: step_resources("data")["threads"]
        resources:
            mem_mb=step_resources("data")["mem_mb"],
            runtime=step_resources("data")["runtime"],
        params:
            cli=RASA,
            params_file=PARAMS,
            out=lambda w, output: os.path.dirname(output.annotations),
        shell:
            "{params.cli} data corpus --params {params.params_file} --workers {threads} "
            "--out {params.out} > {log} 2>&1"

    rule pretrain_tokens:
        input:
            annotations=PLAN.pretrain.annotations,
        output:
            tokens=PLAN.pretrain.tokens,
        log:
            "logs/pretrain/tokenize.log",
        conda:
            ENV
        resources:
            mem_mb=step_resources("data")["mem_mb"],
            runtime=step_resources("data")["runtime"],
        params:
            cli=RASA,
            tokenizer=PLAN.pretrain.tokenizer,
        shell:
            "{params.cli} data tokenize --annotations {input.annotations} "
            "--tokenizer {params.tokenizer} --out {output.tokens} > {log} 2>&1"

    rule pretrain:
        input:
            annotations=ancient(PLAN.pretrain.annotations),
            images=ancient(PLAN.pretrain.corpus_outputs[1]),
            tokens=ancient(PLAN.pretrain.tokens),
        output:
            PLAN.pretrain.outputs,
        log:
            "logs/pretrain/pretrain.log",
        conda:
            ENV
        threads: config["pretrain"].get("threads", 1)
        resources:
            mem_mb=step_resources("train")["mem_mb"],
            runtime=step_resources("train")["runtime"],
        params:
            cli=RASA,
            params_file=PARAMS,
            run_dir=PLAN.pretrain.run_dir,
            export=lambda w, output: os.path.dirname(output[0]),
        shell:
            "{params.cli} pretrain --params {params.params_file} --out {params.run_dir} "
            "--export {params.export} --resume=auto --no-progress > {log} 2>&1"
