"""``rasa train``, ``rasa pretrain``, ``rasa evaluate``, ``rasa generator`` and ``rasa bench``:
thin wrappers.

argv carries paths and run flags; values come from ``params.yaml`` (or a saved
``config.yaml``) plus ``--set key=value`` overrides. ``rasa train`` exits with status 75
(EX_TEMPFAIL) after a SIGTERM/SIGUSR1 checkpoint so a scheduler requeues it.
"""

from __future__ import annotations

import argparse
import json

from rasa.cli import non_negative_int, positive_int
from rasa.data.annotations import SPLITS
from rasa.variants import FULL, list_variants


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one experiment (RaSa recipe), select on val, test once",
        description="Train an experiment of params.yaml (or a saved config.yaml) into --out: "
        "checkpoint_last.pt, checkpoint_best.pt (best on validation), metrics.json (test "
        "metrics of the selected checkpoint, last-epoch test, val curve, timings), "
        "train_log.txt, curve/ (dvclive) and config.yaml. The dataset must already be "
        "parsed and tokenized (`rasa data`). Under torchrun it runs DDP. SIGTERM/SIGUSR1 "
        "save a checkpoint and exit with 75; --resume continues exactly.",
    )
    add_run_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser(
        "pretrain",
        help="pre-train a backbone on the SynthPEDES corpus with ALBEF's objectives",
        description="Pre-train with ITC (momentum distillation, queues), ITM on in-batch "
        "negatives (hard or random: loss.itm_negatives, loss.itm_random_epochs) and MLM "
        "(the `pretrain` section of --params: objective set, corpus, train/"
        "loss/eval settings over the backbone's) on the corpus of `rasa data corpus`, "
        "tokenized with `rasa data tokenize`. Writes the final model into --export "
        "(model.safetensors + tokenizer.json, the starting point of fine-tuning, with its "
        "held-out metrics.json: ITM loss and accuracy, R@1 first stage and re-ranked, and loss "
        "curves) and the run (log, curves, resumable checkpoints) into --out. "
        "SIGTERM/SIGUSR1 save a checkpoint and exit with 75; --resume continues.",
    )
    add_run_arguments(p, experiment=False, data=False)
    p.add_argument("--export", metavar="DIR",
                   help="folder of the final model (default: --out; the workflow passes "
                   "params' pretrain.out)")  # fmt: skip
    p.add_argument("--threads", type=positive_int,
                   help="torch CPU threads (default: params' pretrain.threads, else torch's); "
                   "recorded with the model: the bytes depend on it")  # fmt: skip
    p.set_defaults(func=_pretrain)

    p = sub.add_parser(
        "generator",
        help="train the f-RTD generator of a token cache (once; reused by every f-RTD run)",
        description="Train the fixed generator of f-RTD (a small MLM on the training captions "
        "of --annotations, seed 0) and write it to --out (default: beside the token cache, "
        "<tokens>.rtd_generator.pt, where `rasa train` looks for it). A generator already "
        "trained on this very cache is left as it is.",
    )
    p.add_argument("--annotations", required=True, help="annotation table (.json)")
    p.add_argument("--tokens", required=True, help="token cache (.npz) of that table")
    p.add_argument("--out", help="generator file (default: <tokens>.rtd_generator.pt)")
    p.add_argument(
        "--steps", type=positive_int, default=1000, help="MLM training steps (default 1000)"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_generator)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a split (two-stage retrieval metrics, top-k)",
        description="Rank the gallery of --split by unimodal similarity, re-rank the top k by "
        "the ITM head, and write R@1/5/10, mAP, mINP (both stages) as JSON.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) written by rasa train")
    p.add_argument("--annotations", required=True, help="annotation table (.json)")
    p.add_argument("--tokens", required=True, help="token cache (.npz)")
    p.add_argument("--split", default="test", choices=SPLITS)
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--topk-out", help="also write per-query top-k results here")
    p.add_argument(
        "--dataset", metavar="NAME",
        help="name of the evaluated dataset when it is not the training one (Table 7: the "
        "metrics' meta then names it and the training set as source_dataset)",
    )  # fmt: skip
    p.add_argument("--k-test", type=non_negative_int, default=None,
                   help="candidates re-ranked (default: the run's eval.k_test; 0 = no "
                   "re-ranking, the default for variants without ITM)")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="bf16 autocast (on a CPU too), fp32 (default), or auto (bf16 on CUDA "
                   "only)")  # fmt: skip
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("bench", help="time a training step or an evaluation; prints one JSON line")
    bsub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    b = bsub.add_parser(
        "train-step",
        help="median seconds, FLOPs and memory of one training step",
        description="Time full training steps (forward, backward, AdamW) of a backbone at any "
        "size on random inputs; print one JSON line (seconds, GFLOP per step, RSS after imports, "
        "the steps' added peak memory; CUDA: peak allocated).",
    )
    b.add_argument("--variant", default=FULL, choices=list_variants())
    b.add_argument("--batch-size", type=positive_int, default=32)
    b.add_argument("--compile", action="store_true", help="torch.compile the step")
    b.add_argument("--warmup", type=non_negative_int, default=2)
    b.add_argument("--repeats", type=positive_int, default=5)
    b.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting step")
    add_bench_arguments(b, caption_length=(15, 30))
    b.set_defaults(func=_bench_train_step)
    b = bsub.add_parser(
        "evaluate",
        help="time the two-stage evaluation on random data",
        description="Time the embedding stage and the batched re-ranking of --queries random "
        "captions against --gallery random images (top --k-test re-ranked), and the "
        "official-style per-query loop on --naive-queries of them; print one JSON line.",
    )
    b.add_argument("--gallery", type=positive_int, default=600, help="gallery images (default 600)")
    b.add_argument("--queries", type=positive_int, default=300, help="query captions (default 300)")
    b.add_argument(
        "--k-test", type=non_negative_int, default=32, help="candidates re-ranked (default 32)"
    )
    b.add_argument(
        "--batch-size", type=positive_int, default=64, help="embedding batch (default 64)"
    )
    b.add_argument("--pair-batch", type=positive_int, default=256, help="pairs per fusion call")
    b.add_argument("--image-block", type=positive_int, default=256, help="images per K/V block")
    b.add_argument("--compare", choices=("fp32", "bf16", "auto"),
                   help="run again in this precision and report both and their agreement")  # fmt: skip
    b.add_argument("--naive-queries", type=non_negative_int, default=None,
                   help="queries timed with the per-query loop (default all; 0 = none)")  # fmt: skip
    add_bench_arguments(b, caption_length=(3, 30))
    b.set_defaults(func=_bench_evaluate)


# bench size flags -> ModelConfig fields (text/fusion layers: see rasa.engine.bench)
SIZE_FLAGS = (
    ("--patch-size", "patch_size"),
    ("--vision-width", "vision_width"),
    ("--vision-depth", "vision_depth"),
    ("--vision-heads", "vision_heads"),
    ("--vision-mlp", "vision_mlp_dim"),
    ("--text-width", "text_width"),
    ("--text-heads", "text_heads"),
    ("--text-intermediate", "text_intermediate"),
    ("--text-layers", "text_layers"),
    ("--fusion-layers", "fusion_layers"),
    ("--vocab-size", "vocab_size"),
    ("--queue-size", "queue_size"),
    ("--embed-dim", "embed_dim"),
)


def add_bench_arguments(b: argparse.ArgumentParser, caption_length: tuple[int, int]) -> None:
    """Backbone, every model size, caption lengths, device, precision and threads."""
    b.add_argument("--backbone", default="tiny")
    b.add_argument("--image-size", type=positive_int, nargs=2, metavar=("H", "W"))
    for flag, field in SIZE_FLAGS:
        b.add_argument(flag, type=positive_int, metavar="N", dest=field)
    b.add_argument("--caption-length", type=positive_int, nargs=2, metavar=("MIN", "MAX"),
                   default=caption_length, help="random caption lengths in tokens "
                   f"(default {caption_length[0]} {caption_length[1]})")  # fmt: skip
    b.add_argument(
        "--model-set", dest="model_sets", action="append", default=[], metavar="KEY=VALUE",
        help="any other ModelConfig field, e.g. --model-set hidden_dropout=0 (YAML values)",
    )  # fmt: skip
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "auto"),
                   help="bf16 autocast (on a CPU too), fp32, or auto (bf16 on CUDA only)")  # fmt: skip
    b.add_argument("--threads", type=positive_int, help="torch CPU threads")


def bench_sizes(args: argparse.Namespace) -> dict:
    """The size flags of a bench command as ModelConfig overrides (see add_bench_arguments)."""
    import yaml

    from rasa.errors import ConfigError

    sizes = {field: getattr(args, field) for _, field in SIZE_FLAGS}
    sizes["image_size"] = args.image_size
    for item in args.model_sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-set {item!r}: expected KEY=VALUE.")
        sizes[key.strip()] = yaml.safe_load(value)
    return sizes


def add_run_arguments(
    p: argparse.ArgumentParser, experiment: bool = True, data: bool = True
) -> None:
    """The arguments of a training command (`rasa train`, `rasa cmmt train`: see resolve_run;
    `rasa pretrain`, whose run is the params' `pretrain` section: no ``experiment`` and no
    ``data`` paths)."""
    config_help = "a resolved config.yaml to run as is"
    if experiment:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--experiment", metavar="NAME", help="experiment name in --params")
        src.add_argument("--config", metavar="FILE", help=config_help)
    else:
        p.add_argument("--config", metavar="FILE", help=config_help)
    p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="override a value, e.g. --set train.lr=1e-4 (repeatable; YAML values)",
    )  # fmt: skip
    if data:
        p.add_argument("--annotations", help="annotation table (default: from data.root)")
        p.add_argument("--tokens", help="token cache (default: from data.root and the tokenizer)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--resume", nargs="?", const="strict", choices=("strict", "auto"), default=None,
        help="continue from checkpoint_last.pt, only if it was written with the same config "
        "and data (else stop and name the changed keys); --resume=auto instead moves such a "
        "run aside to <out>.stale-<time>/ and starts afresh (what the workflow passes)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.add_argument(
        "--no-dvclive", action="store_true", help="write curves as CSV/JSONL instead of dvclive"
    )


def resume_mode(args: argparse.Namespace) -> bool | str:
    """``--resume`` -> True, ``--resume=auto`` -> "auto", absent -> False."""
    return {None: False, "strict": True, "auto": "auto"}[args.resume]


def check_out_dir(out: str) -> None:
    """Fail early (before data and model are loaded) on an --out that cannot be a run folder."""
    import os
    from pathlib import Path

    from rasa.errors import ConfigError

    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: a file is there, but a folder is expected.")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {path}: {parent} is a file, but a folder is expected.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--out {path}: {parent} cannot be written (read-only file system or no "
            "permission); choose an output folder you can write to."
        )


def resolve_run(args: argparse.Namespace):
    """The experiment config of a train command (``--config`` or ``--experiment`` + ``--set``,
    ``--annotations``, ``--tokens``) and the params it came from (None for ``--config``)."""
    from rasa.config import load_config, load_params, resolve_experiment

    sets = list(args.sets)
    if args.annotations:
        sets.append(f"annotations={args.annotations}")
    if args.tokens:
        sets.append(f"tokens={args.tokens}")
    if args.config:
        return load_config(args.config, sets), None
    params = load_params(args.params)
    return resolve_experiment(params, args.experiment, sets, args.params), params


def _train(args: argparse.Namespace) -> int:
    from rasa.engine.train import EX_TEMPFAIL, Preempted, train

    cfg, _ = resolve_run(args)
    check_out_dir(args.out)
    try:
        if cfg.method == "cmmt":  # weakly supervised: rasa.weak, settings in the config's cmmt
            from rasa.weak.train import train_cmmt

            metrics = train_cmmt(
                cfg, args.out, device=args.device, resume=resume_mode(args),
                progress=not args.no_progress, dvclive=not args.no_dvclive,
            )  # fmt: skip
        else:
            metrics = train(
                cfg, args.out, device=args.device, resume=resume_mode(args),
                progress=not args.no_progress, dvclive=not args.no_dvclive,
            )  # fmt: skip
    except Preempted as exc:
        print(f"{exc}; checkpoint saved, exit {EX_TEMPFAIL} (requeue and run with --resume)")
        return EX_TEMPFAIL
    if metrics:
        keys = ("r1", "r5", "r10", "mAP", "mINP")
        print(json.dumps({k: metrics.get(k) for k in keys}))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from rasa.config import load_config, load_params
    from rasa.engine.pretrain import pretrain, resolve_pretrain
    from rasa.engine.train import EX_TEMPFAIL, Preempted

    threads = args.threads
    if args.config:
        cfg = load_config(args.config, args.sets)
    else:
        params = load_params(args.params)
        cfg = resolve_pretrain(params, args.sets, args.params)
        threads = threads or params["pretrain"].get("threads")
    check_out_dir(args.out)
    if args.export:
        check_out_dir(args.export)
    if threads:
        torch.set_num_threads(threads)
    try:
        metrics = pretrain(
            cfg, args.out, device=args.device, resume=resume_mode(args),
            progress=not args.no_progress, dvclive=not args.no_dvclive, export=args.export,
        )  # fmt: skip
    except Preempted as exc:
        print(f"{exc}; checkpoint saved, exit {EX_TEMPFAIL} (requeue and run with --resume)")
        return EX_TEMPFAIL
    if metrics:
        keys = ("itm_loss", "itm_acc", "r1")
        print(json.dumps({**{k: metrics.get(k) for k in keys},
                          "first_stage_r1": metrics["first_stage"]["r1"]}))  # fmt: skip
    return 0


def _generator(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rasa.config import generator_path
    from rasa.data.annotations import Annotations
    from rasa.data.token_cache import load_cache
    from rasa.engine.device import pick_device
    from rasa.errors import ConfigError
    from rasa.models.generator import ensure_generator

    device = pick_device(args.device)
    out = Path(args.out or generator_path(args.tokens))
    if out.is_dir():  # found before training, not when writing
        raise ConfigError(f"{out}: a folder is there; expected the generator file to write.")
    ann = Annotations.load(args.annotations)
    cache = load_cache(args.tokens)
    cache.check_matches(ann, args.annotations)
    ensure_generator(ann, cache, out, device, steps=args.steps)
    print(f"{out}: f-RTD generator of {args.tokens}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from rasa.engine.evaluate import evaluate_checkpoint

    evaluate_checkpoint(
        args.checkpoint, args.annotations, args.tokens, split=args.split, out=args.out,
        topk_out=args.topk_out, k=args.k_test, device=args.device, dtype=args.dtype,
        dataset=args.dataset,
    )  # fmt: skip
    return 0


def _bench_train_step(args: argparse.Namespace) -> int:
    from rasa.engine.bench import bench_train_step

    res = bench_train_step(
        backbone=args.backbone, variant=args.variant, batch_size=args.batch_size,
        sizes=bench_sizes(args), caption_length=tuple(args.caption_length),
        device=args.device, dtype=args.dtype, compile=args.compile, warmup=args.warmup,
        repeats=args.repeats, threads=args.threads, count_flops=not args.no_flops,
    )  # fmt: skip
    print(json.dumps(res))
    return 0


def _bench_evaluate(args: argparse.Namespace) -> int:
    from rasa.engine.bench import bench_evaluate

    res = bench_evaluate(
        args.backbone, num_queries=args.queries, num_images=args.gallery, k=args.k_test,
        sizes=bench_sizes(args), caption_length=tuple(args.caption_length),
        batch_size=args.batch_size, pair_batch=args.pair_batch, image_block=args.image_block,
        device=args.device, dtype=args.dtype, compare=args.compare,
        naive_queries=args.naive_queries, threads=args.threads,
    )  # fmt: skip
    print(json.dumps(res))
    return 0
