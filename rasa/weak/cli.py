"""``rasa cmmt train``: weakly supervised CMMT training of an experiment of ``params.yaml``.

The experiment gives the dataset, backbone, model, optimiser and evaluation settings (its
``variant`` is ignored: CMMT has its own losses); CMMT's own settings
(:class:`rasa.weak.train.CMMTConfig`) come from a top-level ``cmmt:`` section of the params
file when present, then ``--cmmt key=value`` overrides (YAML values). The settings used are
saved in the run's ``config.yaml`` (key ``cmmt``), so ``--config run/config.yaml`` keeps them.
Outputs as ``rasa train`` plus ``cmmt_config.json`` and ``metrics.json["pseudo_labels"]``.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cmmt", help="weakly supervised CMMT (no identity labels)")
    csub = p.add_subparsers(dest="cmmt_command", metavar="WHAT", required=True)
    t = csub.add_parser(
        "train",
        help="train an experiment with CMMT (pseudo identities, MPLR, Text-IoU losses)",
        description="Train --experiment with CMMT into --out: checkpoints, metrics.json (same "
        "schema as `rasa train` + pseudo_labels: clusters, outliers, MPLR rescues and the "
        "adjusted Rand index against the true ids per re-clustering), train_log.txt, curve/.",
    )
    from rasa.engine.cli import add_run_arguments

    add_run_arguments(t)
    t.add_argument(
        "--cmmt", dest="cmmt_sets", action="append", default=[], metavar="KEY=VALUE",
        help="CMMT setting, e.g. --cmmt eps=0.5 --cmmt metric=cosine (repeatable)",
    )  # fmt: skip
    t.set_defaults(func=_train)


def cmmt_settings(params: dict | None, sets: list[str]) -> dict:
    """The ``cmmt:`` section of the params (if any) updated by ``key=value`` items."""
    from rasa.config import parse_set
    from rasa.weak.train import CMMTConfig

    raw = dict((params or {}).get("cmmt") or {})
    for item in sets:
        key, value = parse_set(item)
        raw[key] = value
    CMMTConfig.from_any(raw)  # unknown keys -> ConfigError naming them
    return raw


def _train(args: argparse.Namespace) -> int:
    from rasa.engine.cli import check_out_dir, resolve_run, resume_mode
    from rasa.engine.loop import EX_TEMPFAIL, Preempted
    from rasa.weak.train import train_cmmt

    cfg, params = resolve_run(args)
    check_out_dir(args.out)
    # the experiment's resolved `cmmt` (params or config.yaml), else the params' section
    base = {"cmmt": cfg.cmmt} if cfg.cmmt is not None else params
    try:
        metrics = train_cmmt(
            cfg, args.out, device=args.device, resume=resume_mode(args),
            progress=not args.no_progress, dvclive=not args.no_dvclive,
            cmmt=cmmt_settings(base, args.cmmt_sets),
        )  # fmt: skip
    except Preempted as exc:
        print(f"{exc}; checkpoint saved, exit {EX_TEMPFAIL} (requeue and run with --resume)")
        return EX_TEMPFAIL
    keys = ("r1", "r5", "r10", "mAP", "mINP")
    print(json.dumps({k: metrics.get(k) for k in keys} | {"first_stage": metrics["first_stage"]}))
    return 0
