# Data: SynthPEDES or a fetched archive -> raw files -> annotation table -> token cache.


wildcard_constraints:
    dataset=regex(PLAN.datasets),


rule synth:
    output:
        raw=directory("data/{dataset}/raw"),
    log:
        "logs/synth/{dataset}.log",
    wildcard_constraints:
        dataset=regex(n for n, d in PLAN.datasets.items() if d.spec["source"] == "synth"),
    conda:
        ENV
    threads: step_resources("data")["threads"]
    resources:
        mem_mb=step_resources("data")["mem_mb"],
        runtime=step_resources("data")["runtime"],
    params:
        cli=RASA,
        spec=lambda w: PLAN.datasets[w.dataset].spec,
    shell:
        "{params.cli} data synth --preset {params.spec[preset]} --ids {params.spec[ids]} "
        "--seed {params.spec[seed]} --workers {threads} --out {output.raw} > {log} 2>&1"


rule fetch:
    output:
        raw=directory("data/{dataset}/raw"),
    log:
        "logs/fetch/{dataset}.log",
    wildcard_constraints:
        dataset=regex(n for n, d in PLAN.datasets.items() if d.spec["source"] == "url"),
    conda:
        ENV
    resources:
        runtime=step_resources("data")["runtime"],
    params:
        cli=RASA,
        spec=lambda w: PLAN.datasets[w.dataset].spec,
    shell:
        "{params.cli} data fetch --url {params.spec[url]} --sha256 {params.spec[sha256]} "
        "--extract --out {output.raw} > {log} 2>&1"


rule fetch_weights:
    # a backbone's weights given as {url, sha256} in params (backbones.<name>.pretrained)
    output:
        weights="{weights}",
    log:
        "logs/fetch/{weights}.log",
    wildcard_constraints:
        weights=regex(PLAN.weights),
    conda:
        ENV
    resources:
        runtime=step_resources("data")["runtime"],
    params:
        cli=RASA,
        source=lambda w: PLAN.weights[w.weights],
    shell:
        "{params.cli} data fetch --url {params.source[0]} --sha256 {params.source[1]} "
        "--out {output.weights} > {log} 2>&1"


rule parse:
    input:
        raw=lambda w: PLAN.datasets[w.dataset].require_raw(),
    output:
        annotations="data/{dataset}/annotations.json",
    log:
        "logs/parse/{dataset}.log",
    conda:
        ENV
    resources:
        mem_mb=step_resources("data")["mem_mb"],
        runtime=step_resources("data")["runtime"],
    params:
        cli=RASA,
        fmt=lambda w: PLAN.datasets[w.dataset].format,
    shell:
        "{params.cli} data parse --format {params.fmt} --root {input.raw} "
        "--out {output.annotations} > {log} 2>&1"


rule tokenize:
    input:
        annotations="data/{dataset}/annotations.json",
        # a transfer cache (Table 7) reuses the source run's tokenizer: `cache:<source cache>`
        source=lambda w: PLAN.token_source(f"data/{w.dataset}/tokens-{w.spec}.npz") or [],
    output:
        tokens="data/{dataset}/tokens-{spec}.npz",
    log:
        "logs/tokenize/{dataset}-{spec}.log",
    conda:
        ENV
    resources:
        mem_mb=step_resources("data")["mem_mb"],
        runtime=step_resources("data")["runtime"],
    params:
        cli=RASA,
        tokenizer=lambda w, output: PLAN.tokens[output.tokens][1],
    shell:
        "{params.cli} data tokenize --annotations {input.annotations} "
        "--tokenizer {params.tokenizer} --out {output.tokens} > {log} 2>&1"


rule generator:
    input:
        annotations="data/{dataset}/annotations.json",
        tokens="data/{dataset}/tokens-{spec}.npz",
    output:
        generator="data/{dataset}/tokens-{spec}.npz.rtd_generator.pt",
    log:
        "logs/generator/{dataset}-{spec}.log",
    conda:
        ENV
    resources:
        mem_mb=step_resources("data")["mem_mb"],
        runtime=step_resources("data")["runtime"],
    params:
        cli=RASA,
    shell:
        "{params.cli} generator --annotations {input.annotations} --tokens {input.tokens} "
        "--out {output.generator} > {log} 2>&1"
