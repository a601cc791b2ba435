"""The pipeline's DAG as data: which files a suite builds, from which inputs.

Both runners read this one module, so they cannot drift apart: the Snakefile
(``workflow/rules/common.smk``) asks it for a suite's targets and each rule's inputs, and
``rasa workflow dvc-grid`` writes the same plan as ``workflow/dvc_grid.yaml``, the variables
over which ``dvc.yaml`` iterates (``foreach``). A test checks that the output set of both DAGs
is equal and that the committed grid file is up to date.

Paths (DESIGN.md, "Workflow and versioning"):

- ``data/{dataset}/raw/``             SynthPEDES output or a fetched archive (real datasets
  given as a local ``path`` are read where they are)
- ``data/{dataset}/annotations.json`` the canonical annotation table (``rasa data parse``)
- ``data/{dataset}/tokens-{spec}.npz`` the token cache (``rasa data tokenize``)
- ``checkpoints/{experiment}/``       ``rasa train`` output (checkpoints, curve, log, config);
  ``metrics.json`` there is written last, so it marks a finished run
- ``results/metrics/{experiment}.json`` and ``results/topk/{experiment}.json``: test metrics of
  the checkpoint selected on validation, and per-query top-10 (``rasa evaluate``)
- ``data/{target}/tokens-{dataset}-{spec}.npz`` and ``results/{metrics,topk}/{experiment}--on-
  {target}.json``: an experiment's ``test_on`` datasets (Table 7, domain generalisation): the
  target's captions tokenized with the source cache's tokenizer (``cache:`` spec), the selected
  checkpoint evaluated on the target's test split
- ``backbones.<name>.pretrained``: the weights file a run starts from is an input of its
  training job; given as ``{url, sha256}`` it is fetched (``rasa data fetch``) into
  ``{data.root}/weights/{backbone}/{file}``, given as a path it is read where it is
- ``{tokens}.rtd_generator.pt``: the f-RTD generator of a token cache (``rasa generator``), a
  small MLM trained once on the training captions and shared by every f-RTD run of the dataset
- ``results/{suite}/``: ``rasa report`` of the suite (README.md index, tables/, figures/,
  comparison.csv)
- pre-training (issue #12), when a run starts from ``pretrain.out`` (its weights
  ``backbones.<name>.pretrained`` or its tokenizer ``checkpoint:`` lie there):
  ``data/pretrain-corpus/annotations.json`` (``rasa data corpus``), its token cache
  ``data/pretrain-corpus/tokens-{spec}.npz``, the run ``checkpoints/pretrain/`` and the export
  ``{pretrain.out}/`` (``model.safetensors``, ``tokenizer.json``, ``metrics.json``: committed,
  so a fresh clone fine-tunes without pre-training again; the Snakemake rule marks its inputs
  ``ancient`` for that reason, DVC rebuilds it when a dependency's content changes)
- assembling (``--config assemble=True``, Snakemake only): a suite's report drawn from the
  committed metrics, top-k files and reports of its parts (:func:`assembly_parts`), for a suite
  too long to run in one go; no training or evaluation job is in that DAG
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasa.config import (
    dataset_paths,
    generator_path,
    load_params,
    resolve_pretrained,
    tokens_filename,
)
from rasa.errors import ConfigError, DataError
from rasa.io import write_text
from rasa.variants import get_variant

CHECKPOINTS = "checkpoints"
PRETRAIN_RUN = f"{CHECKPOINTS}/pretrain"
RESULTS = "results"
GRID_FILE = Path("workflow") / "dvc_grid.yaml"


@dataclass(frozen=True)
class Dataset:
    name: str
    spec: dict[str, Any]
    annotations: str

    @property
    def raw(self) -> str:
        """The directory `rasa data parse` reads."""
        if self.spec["source"] == "path":
            return self.spec["path"]
        return str(Path(self.annotations).parent / "raw")

    @property
    def generated(self) -> bool:
        """True when a rule makes :attr:`raw` (synth or url), False for a local path."""
        return self.spec["source"] in ("synth", "url")

    def require_raw(self) -> str:
        """:attr:`raw`, checked: a real dataset given by path must be where params says."""
        if not self.generated and not Path(self.raw).exists():
            raise ConfigError(
                f"dataset {self.name!r}: {self.raw} not found. Real datasets are given on "
                "request by their authors: place the release there (the folder holding "
                f"its JSON file and imgs/), or set data.datasets.{self.name}.path (or url + "
                "sha256) in params.yaml. See README.md, 'Real data and checkpoints'."
            )
        return self.raw

    @property
    def format(self) -> str:
        from rasa.data.synth import PARSE_FORMATS

        return PARSE_FORMATS.get(self.spec.get("preset", ""), self.spec.get("format", "auto"))


class _Evaluated:
    """A test evaluation's two files, named after :attr:`name`."""

    name: str

    @property
    def metrics(self) -> str:
        return f"{RESULTS}/metrics/{self.name}.json"

    @property
    def topk(self) -> str:
        return f"{RESULTS}/topk/{self.name}.json"


@dataclass(frozen=True)
class Transfer(_Evaluated):
    """The selected checkpoint of ``experiment`` tested on another dataset (Table 7)."""

    experiment: str
    target: str
    annotations: str  # the target's
    tokens: str  # the target's captions, the source run's tokenizer

    @property
    def name(self) -> str:
        return f"{self.experiment}--on-{self.target}"


@dataclass(frozen=True)
class Run(_Evaluated):
    experiment: str
    dataset: str
    backbone: str
    tokenizer: str
    annotations: str
    tokens: str
    generator: str | None = None  # the f-RTD generator file the run reads, if any
    transfers: tuple[Transfer, ...] = ()
    weights: str | None = None  # the weights file the run starts from, if any
    weights_url: tuple[str, str] | None = None  # (url, sha256) when the workflow fetches it

    @property
    def name(self) -> str:
        return self.experiment

    @property
    def train_dir(self) -> str:
        return f"{CHECKPOINTS}/{self.experiment}"


@dataclass(frozen=True)
class Pretrain:
    """The pre-training step: corpus -> its token cache -> ``rasa pretrain`` -> export."""

    corpus: str  # the corpus folder (rasa data corpus --out)
    tokenizer: str  # the corpus tokenizer spec
    tokens: str  # the corpus token cache
    export: str  # pretrain.out: the exported model's folder
    backbone: str = "tiny"  # pretrain.backbone
    run_dir: str = PRETRAIN_RUN

    @property
    def annotations(self) -> str:
        return f"{self.corpus}/annotations.json"

    @property
    def corpus_outputs(self) -> list[str]:
        """What ``rasa data corpus`` writes: the annotation table, the images, the meta."""
        from rasa.data.corpus import IMAGE_DIR, META_FILE

        return [self.annotations, f"{self.corpus}/{IMAGE_DIR}", f"{self.corpus}/{META_FILE}"]

    @property
    def weights(self) -> str:
        from rasa.engine.pretrain import EXPORT_WEIGHTS

        return f"{self.export}/{EXPORT_WEIGHTS}"

    @property
    def tokenizer_file(self) -> str:
        from rasa.data.tokenizer import TOKENIZER_FILE

        return f"{self.export}/{TOKENIZER_FILE}"

    @property
    def outputs(self) -> list[str]:
        """The export's files the DAG tracks (weights, tokenizer, held-out metrics)."""
        return [self.weights, self.tokenizer_file, f"{self.export}/metrics.json"]


def pretrain_step(params: dict[str, Any]) -> Pretrain | None:
    """The pre-training step of ``params`` (None without ``pretrain.out``)."""
    section = params.get("pretrain") or {}
    if not section.get("out"):
        return None
    from rasa.engine.pretrain import corpus_dir

    corpus = corpus_dir(params).as_posix()
    backbone = section.get("backbone", "tiny")
    tok = section.get("tokenizer") or params["backbones"][backbone]["tokenizer"]
    _, tokens = dataset_paths(params["data"]["root"], Path(corpus).name, tok)
    return Pretrain(corpus, tok, str(tokens), str(section["out"]).rstrip("/"), backbone)


def checkpoint_tokenizer_file(spec: str) -> str | None:
    """The file a ``checkpoint:`` tokenizer spec reads (the tokenizer.json beside an export),
    else None."""
    from rasa.data.tokenizer import NOSEP, TOKENIZER_FILE

    kind, _, arg = spec.removesuffix(NOSEP).partition(":")
    if kind != "checkpoint" or not arg:
        return None
    return str(Path(arg).parent / TOKENIZER_FILE) if arg.endswith(".safetensors") else arg


@dataclass(frozen=True)
class Plan:
    suite: str
    datasets: dict[str, Dataset]
    runs: dict[str, Run]
    pretrain: Pretrain | None = None  # set when a run of the suite starts from its export

    @property
    def tokens(self) -> dict[str, tuple[str, str]]:
        """Token cache path -> (dataset, tokenizer spec); a transfer cache's spec is
        ``cache:<the source run's cache>``."""
        out = {r.tokens: (r.dataset, r.tokenizer) for r in self.runs.values()}
        for r in self.runs.values():
            for t in r.transfers:
                out[t.tokens] = (t.target, f"cache:{r.tokens}")
        return out

    def token_source(self, path: str) -> str | None:
        """The file whose tokenizer the token cache ``path`` reuses: the source cache of a
        transfer's (``cache:``), a checkpoint's tokenizer (``checkpoint:``), else None."""
        spec = self.tokens[path][1]
        return spec.partition("cache:")[2] or checkpoint_tokenizer_file(spec)

    @property
    def transfers(self) -> dict[str, Transfer]:
        return {t.name: t for r in self.runs.values() for t in r.transfers}

    @property
    def generators(self) -> dict[str, tuple[str, str]]:
        """f-RTD generator path -> (annotations, token cache) it is trained from."""
        return {r.generator: (r.annotations, r.tokens) for r in self.runs.values() if r.generator}

    @property
    def weights(self) -> dict[str, tuple[str, str]]:
        """Fetched weights file -> (url, sha256); weights given by path are not built."""
        return {r.weights: r.weights_url for r in self.runs.values() if r.weights_url}

    @property
    def evaluations(self) -> list[tuple[str, str]]:
        """(metrics, topk) of every test evaluation: runs, then transfers."""
        out = [(r.metrics, r.topk) for _, r in sorted(self.runs.items())]
        return out + [(t.metrics, t.topk) for _, t in sorted(self.transfers.items())]

    @property
    def report_dir(self) -> str:
        """One report per suite, so that one suite's report never stands in for another's."""
        return f"{RESULTS}/{self.suite}"

    @property
    def report(self) -> str:
        return f"{self.report_dir}/README.md"

    @property
    def report_outputs(self) -> list[str]:
        """What `rasa report` writes: the index, the comparison CSV, tables/ and figures/."""
        d = self.report_dir
        return [self.report, f"{d}/comparison.csv", f"{d}/tables", f"{d}/figures"]

    @property
    def report_annotations(self) -> str:
        """The annotation table Fig. 5 takes its images from (the suite's first dataset)."""
        return next(iter(self.datasets.values())).annotations

    def outputs(self) -> set[str]:
        """Every file or directory the suite's DAG writes (for the two-DAG test)."""
        out = {d.raw for d in self.datasets.values() if d.generated}
        out |= {d.annotations for d in self.datasets.values()}
        out |= set(self.tokens)
        out |= {r.train_dir for r in self.runs.values()}
        out |= {f for pair in self.evaluations for f in pair}
        out |= set(self.generators)
        out |= set(self.weights)
        out |= set(self.report_outputs)
        if self.pretrain:
            p = self.pretrain
            out |= {*p.corpus_outputs, p.tokens, *p.outputs}
        return out


def make_plan(params: dict[str, Any], suite: str | None = None) -> Plan:
    """The suite's datasets and runs (``suite`` defaults to params' ``suite``)."""
    suite = suite or params.get("suite", "quick")
    if suite not in params["suites"]:
        raise ConfigError(
            f"suite {suite!r} is not defined under suites (known: "
            f"{', '.join(sorted(params['suites']))})."
        )
    root = params["data"]["root"]
    datasets: dict[str, Dataset] = {}
    runs: dict[str, Run] = {}
    for name in params["suites"][suite]:
        if name not in params["experiments"]:
            raise ConfigError(
                f"suites.{suite}: experiment {name!r} is not defined under experiments."
            )
        exp = params["experiments"][name]
        tok = exp.get("tokenizer") or params["backbones"][exp["backbone"]]["tokenizer"]
        ann, tokens = dataset_paths(root, exp["dataset"], tok)
        datasets[exp["dataset"]] = _dataset(params, exp["dataset"], root, tok)
        transfers = []
        for target in exp.get("test_on", []):
            if target not in params["data"]["datasets"]:
                raise ConfigError(
                    f"experiments.{name}.test_on: dataset {target!r} is not defined under "
                    "data.datasets."
                )
            datasets.setdefault(target, _dataset(params, target, root, tok))
            target_tokens = str(Path(root) / target / tokens_filename(f"{exp['dataset']}-{tok}"))
            transfers.append(Transfer(name, target, datasets[target].annotations, target_tokens))
        needs = get_variant(exp["variant"]).needs_generator
        generator = str(generator_path(tokens)) if needs else None
        backbone = exp["backbone"]
        weights = resolve_pretrained(
            exp.get("pretrained", params["backbones"][backbone].get("pretrained")), backbone, root
        )
        path = weights["path"] if isinstance(weights, dict) else None
        url = (weights["url"], weights["sha256"]) if path and weights["url"] else None
        runs[name] = Run(
            name, exp["dataset"], backbone, tok, ann, tokens, generator, tuple(transfers),
            path, url,
        )  # fmt: skip
    plan = Plan(suite, datasets, runs)
    step = pretrain_step(params)
    if step is not None:
        reads = {r.weights for r in runs.values()} | {plan.token_source(t) for t in plan.tokens}
        if {step.weights, step.tokenizer_file} & reads:
            return Plan(suite, datasets, runs, step)
    return plan


def assembly_parts(params: dict[str, Any], suite: str, root: str | Path = ".") -> list[str]:
    """The report folders (``results/<part>``) an assembled report of ``suite`` is drawn from.

    A suite too long for one session runs in parts (suites whose runs are a subset of it), each
    with its report ``results/<part>/README.md`` committed beside the metrics and top-k files
    its runs wrote. Assembling (``--config assemble=True``) reports ``suite`` from those files
    alone, without checkpoints. A part is every other suite whose runs all belong to ``suite``
    and whose report exists under ``root``. ConfigError, naming them, when a run of ``suite`` is
    in no part: its metrics file would have no report recording the commit that made it.
    """
    wanted = params["suites"][suite]
    parts = [
        name for name, runs in sorted(params["suites"].items())
        if name != suite and runs and set(runs) <= set(wanted)
        and (Path(root) / RESULTS / name / "README.md").is_file()
    ]  # fmt: skip
    covered = {r for name in parts for r in params["suites"][name]}
    missing = [r for r in wanted if r not in covered]
    if missing:
        candidates = sorted(
            name for name, runs in params["suites"].items()
            if name != suite and set(runs) <= set(wanted) and set(runs) & set(missing)
        )  # fmt: skip
        raise ConfigError(
            f"assemble: suite {suite!r} has {len(missing)} run(s) in no part report "
            f"(results/<part>/README.md): {', '.join(missing[:6])}"
            + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            + ". Run the part suite(s) that hold them first"
            + (f" ({', '.join(candidates)})" if candidates else "")
            + " and commit their reports, or run the suite itself without assemble."
        )
    return [f"{RESULTS}/{name}" for name in parts]


# The DVC stages a run's test metrics come out of, from its dataset to its evaluation (the
# pre-trained export it starts from is compared as files: its weights and tokenizer).
RUN_STAGES = ("synth", "fetch", "parse", "tokenize", "generator", "train", "evaluate", "transfer")


def run_inputs_changed(
    commit: str, params: dict[str, Any], suite: str, cwd: str | Path = "."
) -> list[str]:
    """What the runs of ``suite`` depend on that differs between ``commit`` and HEAD: the code
    of the stages their metrics come out of (:data:`RUN_STAGES`, their ``rasa/`` deps in
    dvc.yaml: data generation and parsing, tokenizing, training, evaluation), the starting
    weights and tokenizer as the plan resolves them, and those stages' params keys (train,
    loss, eval, cmmt, the backbone, the experiment, its dataset and its transfers' targets).
    Empty: a run made at ``commit`` is the run HEAD would make. DataError when ``commit``
    cannot be read."""
    import subprocess

    import yaml

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  check=True, timeout=30).stdout  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            why = (getattr(exc, "stderr", None) or str(exc)).strip()
            raise DataError(
                f"git {' '.join(args)}: cannot read commit {commit!r} ({why})."
            ) from exc

    stages = yaml.safe_load((Path(cwd) / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    paths: list[str] = []
    keys: list[str] = []
    for name in RUN_STAGES:  # a run's metrics come out of these stages
        body = stages.get(name, {})
        body = body.get("do", body)
        paths += [d for d in body.get("deps", []) if not d.startswith("${")]
        keys += [k for k in body.get("params", []) if "${" not in k]
    for run in make_plan(params, suite).runs.values():
        datasets = [run.dataset, *(t.target for t in run.transfers)]
        keys += [f"backbones.{run.backbone}", f"experiments.{run.experiment}"]
        keys += [f"data.datasets.{d}" for d in datasets]
        paths += [p for p in (run.weights, checkpoint_tokenizer_file(run.tokenizer)) if p]
    changed = git("diff", "--name-only", commit, "HEAD", "--", *sorted(set(paths))).split()
    old = yaml.safe_load(git("show", f"{commit}:params.yaml")) or {}

    def get(doc: dict[str, Any], key: str) -> Any:
        for part in key.split("."):
            doc = doc.get(part) if isinstance(doc, dict) else None
        return doc

    changed += [f"params.yaml: {k}" for k in dict.fromkeys(keys) if get(old, k) != get(params, k)]
    return changed


def _dataset(params: dict[str, Any], name: str, root: str, tokenizer: str) -> Dataset:
    ann, _ = dataset_paths(root, name, tokenizer)
    return Dataset(name, params["data"]["datasets"][name], ann)


def dvc_grid(plan: Plan) -> dict[str, Any]:
    """The variables ``dvc.yaml`` iterates over (plain data, deterministic order)."""
    synth = {
        n: {k: d.spec[k] for k in ("preset", "ids", "seed")} | {"raw": d.raw}
        for n, d in sorted(plan.datasets.items())
        if d.spec["source"] == "synth"
    }
    fetched = {
        n: {"url": d.spec["url"], "sha256": d.spec["sha256"], "raw": d.raw}
        for n, d in sorted(plan.datasets.items())
        if d.spec["source"] == "url"
    }
    parse = {
        n: {"raw": d.raw, "format": d.format, "annotations": d.annotations}
        for n, d in sorted(plan.datasets.items())
    }
    tokens = {
        f"{ds}-{Path(path).stem}": {"annotations": plan.datasets[ds].annotations,
                                     "tokenizer": tok, "out": path,
                                     # the source cache of a transfer cache (else a repeat)
                                     "source": plan.token_source(path)
                                     or plan.datasets[ds].annotations}
        for path, (ds, tok) in sorted(plan.tokens.items())
    }  # fmt: skip
    weights = {
        f"{Path(path).parent.name}-{Path(path).name}": {"url": url, "sha256": sha, "out": path}
        for path, (url, sha) in sorted(plan.weights.items())
    }
    runs = {
        n: {"dataset": r.dataset, "backbone": r.backbone, "annotations": r.annotations,
            "tokens": r.tokens,
            # f-RTD runs read the generator; other runs repeat the token cache (DVC allows it)
            "generator": r.generator or r.tokens,
            # the weights file a run starts from (else, again, a repeat of the token cache)
            "weights": r.weights or r.tokens,
            "train_dir": r.train_dir, "metrics": r.metrics, "topk": r.topk}
        for n, r in sorted(plan.runs.items())
    }  # fmt: skip
    generators = {
        f"{Path(tokens).parent.name}-{Path(tokens).stem}": {
            "annotations": ann, "tokens": tokens, "out": path
        }
        for path, (ann, tokens) in sorted(plan.generators.items())
    }  # fmt: skip
    transfers = {
        n: {"train_dir": plan.runs[t.experiment].train_dir, "target": t.target,
            "annotations": t.annotations, "tokens": t.tokens,
            "metrics": t.metrics, "topk": t.topk}
        for n, t in sorted(plan.transfers.items())
    }  # fmt: skip
    p = plan.pretrain
    # keyed by the export's folder name (foreach over an empty mapping: no stage)
    pretrain = (
        {Path(p.export).name: {
            "corpus": p.corpus, "annotations": p.annotations, "tokenizer": p.tokenizer,
            "backbone": p.backbone, "images": p.corpus_outputs[1], "meta": p.corpus_outputs[2],
            "tokens": p.tokens, "run_dir": p.run_dir, "export": p.export, "weights": p.weights,
            "tokenizer_file": p.tokenizer_file, "metrics": p.outputs[2]}}
        if p else {}
    )  # fmt: skip
    return {
        "suite": plan.suite,
        "pretrain": pretrain,
        "synth": synth,
        "fetch": fetched,
        "parse": parse,
        "tokenize": tokens,
        "runs": runs,
        "generators": generators,
        "transfers": transfers,
        "weights": weights,
        "report_annotations": plan.report_annotations,
        "report_dir": plan.report_dir,
        # one string: DVC cannot interpolate a list into a command
        "report_inputs": " ".join(f for pair in plan.evaluations for f in pair),
        "report_runs": " ".join(r.train_dir for _, r in sorted(plan.runs.items())),
        "report_pretrained": f"--pretrained {p.export}" if p else "",
        # the export's held-out metrics (else a repeat of the annotations: DVC allows it)
        "report_pretrained_dep": p.outputs[2] if p else plan.report_annotations,
    }


def grid_text(params_path: str | Path = "params.yaml") -> str:
    import yaml

    plan = make_plan(load_params(params_path))
    header = (
        "# Generated by `rasa workflow dvc-grid` from params.yaml (suite "
        f"{plan.suite!r}); do not edit.\n# dvc.yaml iterates over these; a test keeps it in "
        "sync with params.yaml and the Snakefile.\n"
    )
    # One top-level key: DVC also loads params.yaml's keys as variables, which must not clash.
    return header + yaml.safe_dump({"grid": dvc_grid(plan)}, sort_keys=True, width=100)


# ---- CLI ---------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workflow", help="inspect the pipeline plan; regenerate the DVC grid")
    wsub = p.add_subparsers(dest="workflow_command", metavar="WHAT", required=True)
    g = wsub.add_parser(
        "dvc-grid",
        help="write workflow/dvc_grid.yaml (the variables dvc.yaml iterates over)",
        description="Expand params.yaml's suite (key `suite`) into the datasets, token caches "
        "and runs that dvc.yaml's foreach stages iterate over. Run it after adding "
        "experiments or changing the suite; `--check` exits 1 if the file is stale.",
    )
    g.add_argument("--params", default="params.yaml")
    g.add_argument("--out", default=str(GRID_FILE))
    g.add_argument("--check", action="store_true", help="only check that --out is up to date")
    g.set_defaults(func=_dvc_grid)
    o = wsub.add_parser("outputs", help="list the files a suite builds")
    o.add_argument("--params", default="params.yaml")
    o.add_argument("--suite", help="suite (default: params.yaml's `suite`)")
    o.set_defaults(func=_outputs)


def _dvc_grid(args: argparse.Namespace) -> int:
    text = grid_text(args.params)
    out = Path(args.out)
    if args.check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is out of date: run `rasa workflow dvc-grid`")
            return 1
        print(f"{out} is up to date")
        return 0
    write_text(out, text)
    print(f"wrote {out}")
    return 0


def _outputs(args: argparse.Namespace) -> int:
    for path in sorted(make_plan(load_params(args.params), args.suite).outputs()):
        print(path)
    return 0
