"""`dvc repro` reruns what a change touches: every `rasa` module a stage's command can import
is among that stage's `deps` in dvc.yaml (issue #14: the train stage missed `rasa/weak/` and
synth missed `synth_layouts.py`, so DVC kept stale results after those changed).

The imports are followed statically, lazy ones (inside functions) included, from the function
that handles the stage's sub-command: its own module (argument defaults are part of the
command), the imports at that module's top and inside the handler, then everything those
modules import, transitively. Left out, by rule: modules with no code (a docstring and
constants, e.g. package ``__init__.py`` files), ``rasa/errors.py`` (error texts only) and
``rasa/cli.py`` (dispatch, error messages and argparse value checks).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path

import pytest
import yaml

from rasa.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
EXEMPT = {"rasa/errors.py", "rasa/cli.py"}


def module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


def rasa_imports(tree: ast.AST) -> set[str]:
    """Names of the ``rasa`` modules (and possibly attributes) a syntax tree imports."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] == "rasa"}


def closure(names: set[str], seen: set[Path]) -> set[Path]:
    """The files of ``names`` and of everything they import (packages on the way included)."""
    todo = list(names)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        f = module_file(name)
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(rasa_imports(ast.parse(f.read_text(encoding="utf-8"))))
    return seen


def has_code(f: Path) -> bool:
    tree = ast.parse(f.read_text(encoding="utf-8"))
    plain = (ast.Expr, ast.Assign, ast.AnnAssign, ast.ImportFrom)
    return any(
        not isinstance(n, plain) or (isinstance(n, ast.ImportFrom) and n.module != "__future__")
        for n in tree.body
    )


def handler(words: list[str]):
    parser = build_parser()
    for word in words:
        (sub,) = (a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[word]
    return parser.get_default("func")


def command_modules(cmd: str) -> set[Path]:
    """Every ``rasa`` source file the command ``rasa WORDS --flags ...`` can import."""
    words = []
    for w in cmd.split()[1:]:
        if w.startswith("-"):
            break
        words.append(w)
    func = handler(words)
    own = Path(inspect.getsourcefile(func))
    tree = ast.parse(own.read_text(encoding="utf-8"))
    top = {m for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
           for m in rasa_imports(n)}  # fmt: skip
    inner = rasa_imports(ast.parse(textwrap.dedent(inspect.getsource(func))))
    return closure(top | inner | {func.__module__.rpartition(".")[0]}, {own}) | {own}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_imports_is_a_dep(stage):
    body = STAGES[stage].get("do", STAGES[stage])
    deps = [d.rstrip("/") for d in body.get("deps", []) if "${" not in d]
    for d in deps:
        if d.startswith("rasa"):
            assert (ROOT / d).exists(), f"stage {stage}: dep {d} does not exist"
    missing = []
    for f in sorted(command_modules(body["cmd"])):
        rel = f.relative_to(ROOT).as_posix()
        if rel in EXEMPT or not has_code(f):
            continue
        if not any(rel == d or rel.startswith(d + "/") for d in deps):
            missing.append(rel)
    assert not missing, f"dvc.yaml stage {stage!r}: add to its deps: {', '.join(missing)}"


def test_the_check_sees_lazy_imports():
    """`rasa train` reaches CMMT (rasa/weak) and the f-RTD generator only inside functions."""
    files = {f.relative_to(ROOT).as_posix() for f in command_modules("rasa train --x")}
    assert {"rasa/weak/train.py", "rasa/models/generator.py", "rasa/engine/cli.py"} <= files
    synth = {f.relative_to(ROOT).as_posix() for f in command_modules("rasa data synth")}
    assert "rasa/data/synth_layouts.py" in synth and "rasa/data/fetch.py" not in synth
    assert STAGES["train"]["do"]["params"].count("cmmt") == 1
