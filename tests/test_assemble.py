"""A suite too long for one session, assembled from the committed results of its parts: the
parts must cover it, the DAG trains nothing, and the report says from which commit each part
came and whether its runs' inputs match this commit's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import _snakemake

from rasa.config import load_params
from rasa.errors import ConfigError, DataError
from rasa.report.build import part_commit
from rasa.workflow import (
    assembly_parts,
    checkpoint_tokenizer_file,
    make_plan,
    run_inputs_changed,
)

REPO = Path(__file__).resolve().parent.parent


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def _report_readme(folder: Path, commit: str = "0" * 40) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(f"# Results\n\n- git commit: `{commit}`\n")


def test_parts_must_cover_the_suite_and_the_error_names_what_to_run(tmp_path):
    params = load_params(REPO / "params.yaml")
    _report_readme(tmp_path / "results" / "synth-core")
    with pytest.raises(ConfigError) as err:
        assembly_parts(params, "synth", tmp_path)
    msg = str(err.value)
    assert "suite 'synth'" in msg and "synth-cuhk-300-tiny-itm-seed0" in msg
    for part in ("synth-table4", "synth-tables23-cmmt", "synth-fig4", "synth-tables568"):
        assert part in msg  # the parts that would cover the missing runs
    for part in ("synth-table4", "synth-tables23-cmmt", "synth-fig4", "synth-tables568"):
        _report_readme(tmp_path / "results" / part)
    parts = assembly_parts(params, "synth", tmp_path)
    # every part whose runs lie inside the suite and whose report exists; never the suite itself
    assert parts == [f"results/{p}" for p in ("synth-core", "synth-fig4", "synth-table4",
                                              "synth-tables23-cmmt", "synth-tables568")]  # fmt: skip


def test_part_commit_reads_the_report_line_or_names_the_file(tmp_path):
    _report_readme(tmp_path / "a", "abc123-dirty")
    assert part_commit(tmp_path / "a" / "README.md") == "abc123-dirty"
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("# not a report\n")
    with pytest.raises(DataError, match="b/README.md.*git commit"):
        part_commit(tmp_path / "b" / "README.md")


def test_run_inputs_changed_sees_code_weights_and_params_between_commits(tmp_path):
    """A real repository with commits: a change to the code of a stage a run comes out of (data
    generation, training), its starting weights or tokenizer, or its params keys (a transfer's
    target dataset included) is reported; suites, prose, report code and other experiments are
    not."""
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@t")
    _git(tmp_path, "config", "user.name", "t")
    dvc = {"stages": {
        "synth": {"foreach": "${grid.synth}", "do": {
            "cmd": "rasa data synth", "deps": ["rasa/data/synth.py"], "params": []}},
        "train": {"foreach": "${grid.runs}", "do": {
            "cmd": "rasa train", "deps": ["${item.tokens}", "rasa/engine", "rasa/models"],
            "params": ["train", "loss", "backbones.${item.backbone}", "experiments.${key}"]}},
        "report": {"cmd": "rasa report", "deps": ["rasa/report"]},
    }}  # fmt: skip
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    exp = "synth-cuhk-300-tiny-m-rtd-seed0"  # tested on synth-icfg-300 too (Table 7)
    params["suites"]["part"] = [exp]
    (run,) = make_plan(params, "part").runs.values()
    target = run.transfers[0].target
    tokenizer = checkpoint_tokenizer_file(run.tokenizer)
    files = {"dvc.yaml": yaml.safe_dump(dvc), "params.yaml": yaml.safe_dump(params),
             "rasa/engine/loop.py": "x = 1\n", "rasa/report/build.py": "y = 1\n",
             "rasa/data/synth.py": "z = 1\n", run.weights: "weights", tokenizer: "{}",
             "notes.md": "a\n"}  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "one")
    first = _git(tmp_path, "rev-parse", "HEAD")

    def commit(**changes: str) -> list[str]:
        for name, text in changes.items():
            (tmp_path / name).write_text(text)
        _git(tmp_path, "commit", "-qam", "next")
        now = yaml.safe_load((tmp_path / "params.yaml").read_text())
        return run_inputs_changed(first, now, "part", cwd=tmp_path)

    # prose, report code, a new suite and another experiment's params: the same runs
    params["suites"]["more"] = [exp, "synth-cuhk-300-tiny-cl-seed1"]
    params["experiments"]["synth-cuhk-300-tiny-cl-seed1"]["seed"] = 7
    assert commit(**{"notes.md": "b\n", "rasa/report/build.py": "y = 2\n",
                     "params.yaml": yaml.safe_dump(params)}) == []  # fmt: skip
    # the train stage's code, the tokenizer beside the weights, a params key it reads
    params["train"]["lr"] *= 2
    changed = commit(**{"rasa/engine/loop.py": "x = 2\n", tokenizer: "{\"v\": 2}",
                        "params.yaml": yaml.safe_dump(params)})  # fmt: skip
    assert changed == sorted(["rasa/engine/loop.py", tokenizer]) + ["params.yaml: train"]
    # the data: its generation code, and the spec of the dataset a transfer is tested on
    params["data"]["datasets"][target]["seed"] += 1
    changed = commit(**{"rasa/data/synth.py": "z = 2\n", "params.yaml": yaml.safe_dump(params)})
    code = sorted(["rasa/data/synth.py", "rasa/engine/loop.py", tokenizer])
    assert changed == code + ["params.yaml: train", f"params.yaml: data.datasets.{target}"]
    with pytest.raises(DataError, match="cannot read commit"):
        run_inputs_changed("f" * 40, params, "part", cwd=tmp_path)


def _assembly_tree(tmp_path: Path, parts: dict[str, list[str]], write_metrics: bool = True):
    """The workflow, params with ``assembled`` = the union of ``parts``, their part reports and
    (empty) metrics and top-k files, and the committed pre-trained export's metrics."""
    for name in ("Snakefile", "workflow"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["suites"] = {"quick": params["suites"]["quick"], **parts,
                        "assembled": [r for runs in parts.values() for r in runs]}  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in parts:
        _report_readme(tmp_path / "results" / name)
    plan = make_plan(params, "assembled")
    if write_metrics:
        for metrics, topk in plan.evaluations:
            for f in (metrics, topk):
                (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / f).write_text(json.dumps({}))
    if plan.pretrain:
        export = tmp_path / plan.pretrain.outputs[2]
        export.parent.mkdir(parents=True, exist_ok=True)
        export.write_text("{}")
    return plan


def test_assembling_trains_nothing_and_reads_the_parts_results(tmp_path):
    parts = {"part-a": ["synth-cuhk-300-tiny-cl-seed0"],
             "part-b": ["synth-cuhk-300-tiny-m-rtd-seed0", "synth-cuhk-300-tiny-cmmt-seed0"]}  # fmt: skip
    plan = _assembly_tree(tmp_path, parts)
    proc = _snakemake("-n", "-p", "--cores", "1", "--config", "suite=assembled", "assemble=True",
                      cwd=tmp_path)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    jobs = {line.split()[0] for line in out.split("Job stats:")[1].split("total")[0].splitlines()
            if line and line[0].isalpha() and line.split()[0] != "job"}  # fmt: skip
    # only the data the report's figures read (each dataset's annotations) and the report
    assert jobs == {"synth", "parse", "report", "all"}, out[-3000:]
    assert "--parts results/part-a results/part-b" in out and "--runs" not in out
    assert all(m in out for m, _ in plan.evaluations)


def test_assembling_without_a_parts_metrics_file_names_it(tmp_path):
    parts = {"part-a": ["synth-cuhk-300-tiny-cl-seed0"]}
    _assembly_tree(tmp_path, parts, write_metrics=False)
    proc = _snakemake("-n", "--cores", "1", "--config", "suite=assembled", "assemble=True",
                      cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    assert "results/metrics/synth-cuhk-300-tiny-cl-seed0.json" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_an_assembled_report_equals_its_parts_numbers(tmp_path):
    """From a clone of this repository: a suite made of two committed parts (synth-core inside
    synth-table4) is assembled by the DAG, and its numbers are synth-table4's."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    text = (clone / "params.yaml").read_text()
    table4 = yaml.safe_load(text)["suites"]["synth-table4"]
    text = text.rstrip("\n") + "\n  assembled:\n" + "".join(f"    - {r}\n" for r in table4)
    (clone / "params.yaml").write_text(text)
    _git(clone, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "assembled")
    proc = _snakemake("--cores", "2", "--config", "suite=assembled", "assemble=True", cwd=clone)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = (clone / "results/assembled/comparison.csv").read_text()
    theirs = (clone / "results/synth-table4/comparison.csv").read_text()
    assert ours == theirs.replace("suite=synth-table4", "suite=assembled")
    readme = (clone / "results/assembled/README.md").read_text()
    assert f"- git commit: `{_git(clone, 'rev-parse', 'HEAD')}`" in readme
    for part in ("synth-core", "synth-table4"):
        row = next(ln for ln in readme.splitlines() if ln.startswith(f"| [`{part}`]"))
        assert row.endswith("| the same |"), row
    assert "checkpoints/" not in (clone / "logs/report.log").read_text()
