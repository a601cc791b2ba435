"""Bad input, faults and untrusted files (issue #14): every case a new user can cause ends in a
clear message naming the file or key (exit 2), never in a traceback, a silently wrong result,
code run from a file, or an output left half-written and later trusted.

The cases run the real `rasa` commands (``rasa.cli.main``) on a small SynthPEDES set and a
micro model. Read-only folders and a full disk are real mounts (tmpfs) when the tests run as
root; elsewhere those tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rasa.cli import main
from rasa.config import load_params, resolve_experiment
from rasa.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"

MICRO = [
    "pretrained=none", "model.image_size=[32, 16]", "model.vision_width=32", "model.vision_depth=1",
    "model.vision_mlp_dim=64", "model.text_width=32", "model.text_heads=2",
    "model.text_intermediate=64", "model.num_layers=2", "model.fusion_layer=1",
    "model.embed_dim=32", "model.queue_size=64", "model.max_position_embeddings=64",
    "train.batch_size=16", "train.epochs=1", "train.max_steps=2", "train.num_workers=0",
    "train.ckpt_every_steps=0", "eval.k_test=8",
]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """A 30-identity SynthPEDES CUHK-PEDES set, parsed and tokenized."""
    from rasa.data.formats import parse_to_file
    from rasa.data.synth import generate
    from rasa.data.token_cache import build_cache

    root = tmp_path_factory.mktemp("synth")
    generate("cuhk", n_ids=30, seed=0, out=root / "raw", progress=False)
    parse_to_file("auto", root / "raw", root / "annotations.json")
    build_cache(root / "annotations.json", "wordpiece:300", root / "tokens.npz", progress=False)
    return root / "annotations.json", root / "tokens.npz"


def train_argv(data, out: Path, *extra: str, experiment: str = "synth-cuhk-tiny-cl") -> list[str]:
    ann, tok = data
    sets = [x for s in MICRO for x in ("--set", s)]
    return ["train", "--experiment", experiment, "--params", str(PARAMS), "--annotations",
            str(ann), "--tokens", str(tok), "--out", str(out), "--no-progress", "--no-dvclive",
            *sets, *extra]  # fmt: skip


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of `rasa ARGV` (argparse errors give SystemExit)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return code, err


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A finished micro `cl` run (2 steps)."""
    out = tmp_path_factory.mktemp("runs") / "cl"
    assert main(train_argv(data, out)) == 0
    return out


# ---- untrusted files: no code runs ------------------------------------------------------------
class Payload:
    """Unpickling this creates the folder ``marker``: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def write_payload(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"version": 1, "model": {}, "model_config": None, "x": Payload(marker)}, path)


def test_the_payload_is_real(tmp_path):
    """Loading it the unsafe way does run it (so the tests below show a refusal, not a dud)."""
    write_payload(tmp_path / "p.pt", tmp_path / "ran")
    torch.load(tmp_path / "p.pt", weights_only=False)
    assert (tmp_path / "ran").is_dir()


def test_evaluate_refuses_a_pickle_payload_without_running_it(data, tmp_path, capsys):
    ann, tok = data
    marker = tmp_path / "ran"
    write_payload(tmp_path / "evil.pt", marker)
    code, err = run_cli(["evaluate", "--checkpoint", str(tmp_path / "evil.pt"), "--annotations",
                         str(ann), "--tokens", str(tok), "--out", str(tmp_path / "m.json")],
                        capsys)  # fmt: skip
    assert code == 2 and "refused" in err and "evil.pt" in err
    assert not marker.exists() and not (tmp_path / "m.json").exists()


def test_train_resume_refuses_a_pickle_payload_without_running_it(data, tmp_path, capsys):
    marker = tmp_path / "ran"
    write_payload(tmp_path / "run" / "checkpoint_last.pt", marker)
    code, err = run_cli(train_argv(data, tmp_path / "run", "--resume"), capsys)
    assert code == 2 and "refused" in err and not marker.exists()
    # --resume=auto (the workflow's) moves the file aside, unread, and trains afresh
    assert main(train_argv(data, tmp_path / "run", "--resume=auto")) == 0
    assert not marker.exists()
    (stale,) = tmp_path.glob("run.stale-*")
    assert (stale / "checkpoint_last.pt").is_file()
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_our_checkpoints_hold_only_plain_data(trained):
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        state = torch.load(trained / name, weights_only=True)
        assert state["config"]["variant"] == "cl"
    last = torch.load(trained / "checkpoint_last.pt", weights_only=True)
    assert set(last["data"]) == {"annotations_sha256", "tokens_key"}


def test_checkpoint_writer_refuses_what_weights_only_cannot_read(tmp_path):
    from rasa.engine.checkpoint import save_model_checkpoint

    model = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"record\.value"):
        save_model_checkpoint(tmp_path / "c.pt", model=model, config={},
                              record={"value": np.float64(1.0)})  # fmt: skip
    assert not (tmp_path / "c.pt").exists()


def test_truncated_or_foreign_checkpoints_are_clear_errors(trained, data, tmp_path, capsys):
    ann, tok = data
    cut = tmp_path / "cut.pt"
    raw = (trained / "checkpoint_best.pt").read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    for bad in (cut, tmp_path / "missing.pt", tmp_path, ann):
        code, err = run_cli(["evaluate", "--checkpoint", str(bad), "--annotations", str(ann),
                             "--tokens", str(tok), "--out", str(tmp_path / "m.json")],
                            capsys)  # fmt: skip
        assert code == 2 and str(bad) in err


# ---- resume: only the same run --------------------------------------------------------------
def test_resume_refuses_a_changed_config_and_auto_starts_afresh(data, trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    # a finished cl run resumed as m-rtd: refused, naming the key
    argv = train_argv(data, run, "--resume", "--set", "variant=m-rtd")
    code, err = run_cli(argv, capsys)
    assert code == 2 and "variant" in err and "'cl' -> 'm-rtd'" in err
    code, err = run_cli(train_argv(data, run, "--resume", "--set", "loss.lambda_cl=1.0"), capsys)
    assert code == 2 and "loss.lambda_cl" in err
    # paths and logging may change
    assert main(train_argv(data, run, "--resume", "--set", "train.log_every_steps=5")) == 0
    # --resume=auto: the same config resumes in place (nothing moved aside) ...
    assert main(train_argv(data, run, "--resume=auto")) == 0
    assert not list(tmp_path.glob("run.stale-*"))
    # ... another config moves the old run aside and trains afresh
    assert main(train_argv(data, run, "--resume=auto", "--set", "variant=m-rtd")) == 0
    (stale,) = tmp_path.glob("run.stale-*")
    assert yaml.safe_load((stale / "config.yaml").read_text())["variant"] == "cl"
    assert yaml.safe_load((run / "config.yaml").read_text())["variant"] == "m-rtd"
    assert json.loads((run / "metrics.json").read_text())["meta"]["variant"] == "m-rtd"


def test_resume_refuses_changed_data(data, trained, tmp_path, capsys):
    import shutil

    ann, tok = data
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    doc = json.loads(ann.read_text())
    train = [r for r in doc["records"] if r["split"] == "train"]
    other = next(r for r in train if r["pid"] != train[0]["pid"])
    train[0]["pid"], other["pid"] = other["pid"], train[0]["pid"]  # relabelled: same captions
    changed = tmp_path / "annotations.json"
    changed.write_text(json.dumps(doc))
    argv = train_argv(data, run, "--resume")
    argv[argv.index(str(ann))] = str(changed)
    code, err = run_cli(argv, capsys)
    assert code == 2 and "data.annotations_sha256" in err


def test_resume_after_a_model_shape_change_is_a_clear_error(data, trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    key = next(k for k, v in state["model"].items() if v.ndim == 2)
    state["model"][key] = torch.zeros(3, 3)  # what a changed registry default would give
    torch.save(state, run / "checkpoint_last.pt")
    code, err = run_cli(train_argv(data, run, "--resume"), capsys)
    assert code == 2 and key in err and "(3, 3)" in err


# ---- command-line values --------------------------------------------------------------------
def test_negative_k_test_is_rejected_naming_the_flag(data, tmp_path, capsys):
    ann, tok = data
    code, err = run_cli(["evaluate", "--checkpoint", "x.pt", "--annotations", str(ann),
                         "--tokens", str(tok), "--out", str(tmp_path / "m.json"),
                         "--k-test", "-5"], capsys)  # fmt: skip
    assert code == 2 and "--k-test" in err and ">= 0" in err


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["data", "synth", "--preset", "cuhk", "--ids", "10", "--seed", "-1", "--out", "s"],
         "--seed"),
        (["data", "synth", "--preset", "cuhk", "--ids", "10", "--workers", "0", "--out", "s"],
         "--workers"),
        (["generator", "--annotations", "a", "--tokens", "t", "--steps", "0"], "--steps"),
        (["bench", "evaluate", "--gallery", "-3"], "--gallery"),
    ],
)  # fmt: skip
def test_out_of_range_numbers_are_rejected_naming_the_flag(argv, flag, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2 and flag in err


def test_out_that_is_a_file_or_a_folder_in_the_wrong_place(data, trained, tmp_path, capsys):
    ann, tok = data
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli(train_argv(data, afile), capsys)
    assert code == 2 and "afile" in err and "folder is expected" in err
    code, err = run_cli(train_argv(data, afile / "sub"), capsys)
    assert code == 2 and "afile" in err
    folder = tmp_path / "folder"
    folder.mkdir()
    code, err = run_cli(["evaluate", "--checkpoint", str(trained / "checkpoint_best.pt"),
                         "--annotations", str(ann), "--tokens", str(tok), "--k-test", "0",
                         "--out", str(folder)], capsys)  # fmt: skip
    assert code == 2 and "folder" in err and str(folder) in err
    code, err = run_cli(["data", "tokenize", "--annotations", str(ann), "--tokenizer",
                         "wordpiece:300", "--out", str(folder)], capsys)  # fmt: skip
    assert code == 2 and str(folder) in err
    code, err = run_cli(["data", "synth", "--preset", "cuhk", "--ids", "10", "--out",
                         str(afile)], capsys)  # fmt: skip
    assert code == 2 and "afile" in err


# ---- params.yaml and the schema -------------------------------------------------------------
def _params_with(tmp_path: Path, edit) -> Path:
    params = yaml.safe_load(PARAMS.read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_misspelt_top_level_key_stops_with_its_name(tmp_path):
    path = _params_with(tmp_path, lambda p: p.update(sutie="synth"))
    with pytest.raises(ConfigError, match="sutie"):
        load_params(path)


@pytest.mark.parametrize("key", ["lambda_cl", "alpha", "p_weak"])
def test_loss_values_must_be_numbers(tmp_path, key, capsys):
    path = _params_with(tmp_path, lambda p: p["loss"].update({key: "0.5x"}))
    with pytest.raises(ConfigError, match=f"loss.{key}"):
        load_params(path)
    code, err = run_cli(["train", "--experiment", "synth-cuhk-tiny-cl", "--params",
                         str(PARAMS), "--out", str(tmp_path / "r"), "--set",
                         f"loss.{key}=abc"], capsys)  # fmt: skip
    assert code == 2 and f"loss.{key}" in err


def test_non_utf8_params_and_config_files(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_bytes(b"suite: quick\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_params(bad)
    code, err = run_cli(["train", "--config", str(bad), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and str(bad) in err


def test_cmmt_settings_travel_in_the_resolved_config(data, tmp_path):
    """`rasa train --config run/config.yaml` of a CMMT run keeps its `cmmt:` settings."""
    path = _params_with(tmp_path, lambda p: p["cmmt"].update(eps=0.45, metric="cosine"))
    cfg = resolve_experiment(load_params(path), "synth-cuhk-tiny-cmmt", MICRO)
    assert cfg.cmmt["eps"] == 0.45 and cfg.cmmt["metric"] == "cosine"
    argv = train_argv(data, tmp_path / "a", experiment="synth-cuhk-tiny-cmmt")
    argv[argv.index(str(PARAMS))] = str(path)
    assert main(argv) == 0
    first = json.loads((tmp_path / "a" / "cmmt_config.json").read_text())
    assert first["eps"] == 0.45 and first["metric"] == "cosine"
    again = ["train", "--config", str(tmp_path / "a" / "config.yaml"), "--out",
             str(tmp_path / "b"), "--no-progress", "--no-dvclive"]  # fmt: skip
    assert main(again) == 0
    assert json.loads((tmp_path / "b" / "cmmt_config.json").read_text()) == first


# ---- annotation tables ----------------------------------------------------------------------
def _table(tmp_path: Path, data, edit) -> Path:
    ann, _ = data
    doc = json.loads(ann.read_text())
    edit(doc)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def _set(i: int, key: str, value):
    return lambda d: d["records"][i].__setitem__(key, value)


def _dup_image(d):
    d["records"][1]["image"] = d["records"][0]["image"]


BAD_TABLES = {
    "records missing": (lambda d: d.pop("records"), "'records'"),
    "captions a string": (_set(0, "captions", "a man in red"), "record 0, key 'captions'"),
    "pid a float": (_set(1, "pid", 3.7), "record 1, key 'pid'"),
    "pid a string": (_set(1, "pid", "3"), "record 1, key 'pid'"),
    "empty caption": (_set(2, "captions", ["a man", "  "]), "record 2, key 'captions'"),
    "no caption": (_set(2, "captions", []), "record 2, key 'captions'"),
    "split Test": (_set(3, "split", "Test"), "record 3, key 'split'"),
    "image twice": (_dup_image, "record 1, key 'image'"),
    "image missing": (lambda d: d["records"][4].pop("image"), "record 4, key 'image'"),
    "record not an object": (lambda d: d["records"].__setitem__(0, [1, 2]), "record 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_annotation_tables_are_refused_naming_record_and_key(data, tmp_path, case, capsys):
    from rasa.data.annotations import Annotations

    edit, where = BAD_TABLES[case]
    path = _table(tmp_path, data, edit)
    with pytest.raises(DataError, match=str(path)) as info:
        Annotations.load(path)
    assert where in str(info.value)
    code, err = run_cli(["data", "tokenize", "--annotations", str(path), "--tokenizer",
                         "wordpiece:300", "--out", str(tmp_path / "t.npz")], capsys)  # fmt: skip
    assert code == 2 and not (tmp_path / "t.npz").exists()


def test_non_utf8_annotation_table(data, tmp_path, capsys):
    from rasa.data.annotations import Annotations

    ann, _ = data
    path = tmp_path / "annotations.json"
    path.write_bytes(ann.read_bytes().replace(b"a ", b"\xe9 ", 1))
    with pytest.raises(DataError, match="not UTF-8"):
        Annotations.load(path)


# ---- token cache and generator files --------------------------------------------------------
def test_truncated_token_cache_is_rebuilt_and_refused_clearly(data, tmp_path, capsys):
    from rasa.data.token_cache import build_cache, load_cache

    ann, tok = data
    out = tmp_path / "tokens.npz"
    raw = tok.read_bytes()
    out.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="not a readable token cache"):
        load_cache(out)
    code, err = run_cli(train_argv((ann, out), tmp_path / "run"), capsys)
    assert code == 2 and str(out) in err
    # the same command that made it rebuilds it over the truncated file
    build_cache(ann, "wordpiece:300", out, progress=False)
    assert load_cache(out).meta["key"] == load_cache(tok).meta["key"]
    out.write_bytes(b"not a zip at all")
    assert main(["data", "tokenize", "--annotations", str(ann), "--tokenizer", "wordpiece:300",
                 "--out", str(out)]) == 0  # fmt: skip
    assert load_cache(out).meta["key"] == load_cache(tok).meta["key"]


def test_damaged_or_foreign_generator_files(data, tmp_path):
    from rasa.data.annotations import Annotations
    from rasa.data.token_cache import load_cache
    from rasa.models.generator import ensure_generator, load_generator

    ann, tok = data
    cache = load_cache(tok)
    path = tmp_path / "gen.pt"
    gen = ensure_generator(Annotations.load(ann), cache, path, steps=2)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ConfigError, match="not a readable RTD generator"):
        load_generator(path)
    marker = tmp_path / "ran"
    torch.save({"kind": Payload(marker)}, path)  # a payload
    with pytest.raises(ConfigError, match="not a readable RTD generator"):
        load_generator(path)
    assert not marker.exists()
    torch.save({"kind": "rasa-rtd-generator", "config": {"bogus": 1}}, path)  # foreign
    with pytest.raises(ConfigError, match=str(path)):
        load_generator(path)
    # at its default place the workflow's step trains it again over any of these
    again = ensure_generator(Annotations.load(ann), cache, path, steps=2)
    assert again.state_dict().keys() == gen.state_dict().keys()
    new, old = again.state_dict(), gen.state_dict()
    assert all(torch.equal(new[k], old[k]) for k in old)
    assert path.read_bytes() == good  # same bytes (rasa.io.torch_save names no temp file)


# ---- interrupted synth ----------------------------------------------------------------------
def test_interrupted_synth_leaves_nothing_half_written(tmp_path, monkeypatch):
    from rasa.data import synth

    out = tmp_path / "raw"
    calls = {"n": 0}
    draw = synth._draw_one

    def dies_after_3(task):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return draw(task)

    monkeypatch.setattr(synth, "_draw_one", dies_after_3)
    with pytest.raises(KeyboardInterrupt):
        synth.generate("cuhk", n_ids=10, seed=0, out=out, progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())
    # a run killed outright (no cleanup) leaves only a hidden .partial folder beside: ignored
    (tmp_path / ".raw.x.partial" / "imgs").mkdir(parents=True)
    monkeypatch.setattr(synth, "_draw_one", draw)
    synth.generate("cuhk", n_ids=10, seed=0, out=out, progress=False)
    assert (out / synth.META_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    # and an earlier complete output is replaced only once the new one is complete
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setattr(synth, "_draw_one", dies_after_3)
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        synth.generate("cuhk", n_ids=10, seed=0, out=out, progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# ---- read-only folders and a full disk (real mounts, as root) ------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """Mount a tmpfs at ``path`` (skip the test where that is impossible)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (root ignores permission bits, so a mount "
                    "is the honest read-only / disk-full test)")  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"rasa-{uuid.uuid4().hex[:6]}",
                           str(path)], capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_output_folder(data, trained, tmp_path, capsys):
    ann, tok = data
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        for argv in (
            ["data", "tokenize", "--annotations", str(ann), "--tokenizer", "wordpiece:300",
             "--out", str(ro / "t.npz")],
            ["data", "synth", "--preset", "cuhk", "--ids", "10", "--out", str(ro / "raw")],
            ["evaluate", "--checkpoint", str(trained / "checkpoint_best.pt"), "--annotations",
             str(ann), "--tokens", str(tok), "--k-test", "0", "--out", str(ro / "m.json")],
            train_argv(data, ro / "run"),
        ):  # fmt: skip
            code, err = run_cli(argv, capsys)
            assert code == 2 and "read-only" in err and str(ro) in err, err


def test_disk_full_during_synth_and_checkpoint_write(tmp_path, capsys):
    from rasa.engine.checkpoint import load_checkpoint, save_model_checkpoint
    from rasa.io import write_bytes

    with tmpfs(tmp_path / "full", "size=64k") as full:
        code, err = run_cli(["data", "synth", "--preset", "cuhk", "--ids", "10", "--out",
                             str(full / "raw")], capsys)  # fmt: skip
        assert code == 2 and "no space left" in err and str(full / "raw") in err
        assert list(full.iterdir()) == []  # nothing half-written left behind
        # a checkpoint too large for the disk: the earlier one stays as it was
        small = torch.nn.Linear(2, 2)
        save_model_checkpoint(full / "best.pt", model=small, config={}, record={"step": 1})
        big = torch.nn.Linear(200, 200)
        with pytest.raises(OSError, match="No space left") as info:
            save_model_checkpoint(full / "best.pt", model=big, config={}, record={"step": 2})
        assert info.value.filename == str(full / "best.pt")
        assert load_checkpoint(full / "best.pt")["record"] == {"step": 1}
        assert sorted(p.name for p in full.iterdir()) == ["best.pt"]
        with pytest.raises(OSError, match="No space left"):
            write_bytes(full / "blob", b"x" * 200_000)
        assert sorted(p.name for p in full.iterdir()) == ["best.pt"]


def test_ours_or_official_is_decided_by_content(trained, tmp_path):
    """`rasa evaluate` tells our checkpoints from official ones by what they hold, not by the
    text of an error (issue #15): an official file renamed like ours still loads as official."""
    import shutil

    from rasa.engine.checkpoint import is_rasa_checkpoint, read_safely
    from rasa.engine.evaluate import load_model_for_eval

    official = ROOT / "tests" / "fixtures" / "official_rasa_tiny"
    assert not is_rasa_checkpoint(read_safely(official / "checkpoint.pth"))
    assert is_rasa_checkpoint(read_safely(trained / "checkpoint_best.pt"))
    shutil.copy(official / "checkpoint.pth", tmp_path / "checkpoint_best.pt")
    shutil.copy(official / "config_bert.json", tmp_path / "config_bert.json")
    _, config = load_model_for_eval(tmp_path / "checkpoint_best.pt")
    assert config["source"] == "official"
    _, config = load_model_for_eval(trained / "checkpoint_best.pt")
    assert config["variant"] == "cl"


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    """mkstemp's 0600 is not left on outputs (a served HTML page, shared results)."""
    import os
    import stat

    from rasa.io import write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o644
