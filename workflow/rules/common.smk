# Shared by every rule: validate params.yaml, expand the suite into a plan (rasa.workflow),
# and helpers for resources. Rules call the `rasa` CLI of the Python running Snakemake, by
# absolute path, so cluster jobs use the same environment (it must be on a shared filesystem).
import os
import sys

from snakemake.utils import validate

from rasa.workflow import assembly_parts, make_plan

validate(config, "../schemas/params.schema.yaml")

PARAMS = "params.yaml"
ENV = "../../environment.yml"  # used with --software-deployment-method conda
RASA = f"{sys.executable} -m rasa"
PLAN = make_plan(config, config.get("suite"))
# --config assemble=True: the suite's report from its parts' committed results (no training)
ASSEMBLE = bool(config.get("assemble", False))
PARTS = assembly_parts(config, PLAN.suite) if ASSEMBLE else []

DEFAULT_RESOURCES = {"threads": 1, "mem_mb": 4000, "runtime": 60, "gpus": 0}


def regex(names):
    """A wildcard constraint matching exactly these names (never matches when empty)."""
    import re

    return "|".join(re.escape(n) for n in sorted(names)) or "(?!)"


def step_resources(step, backbone=None):
    """Resources of a step: params `resources.<step>`, then the backbone's `resources`."""
    res = dict(DEFAULT_RESOURCES)
    res.update(config.get("resources", {}).get(step, {}))
    if backbone is not None:
        res.update(config["backbones"][backbone].get("resources", {}))
    return res


def run_resources(wildcards, key):
    exp = config["experiments"][wildcards.experiment]
    return step_resources("train", exp["backbone"])[key]


def transfer(wildcards):
    """The Table 7 transfer an `evaluate_transfer` job makes (rasa.workflow.Transfer)."""
    return PLAN.transfers[f"{wildcards.experiment}--on-{wildcards.target}"]
