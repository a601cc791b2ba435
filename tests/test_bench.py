"""The benchmarks: every size on the command line, one JSON line, memory accounted in two parts
(RSS after imports, the work's added peak) the same way on CUDA and on a CPU."""

from __future__ import annotations

import json

import pytest
import torch

from rasa.cli import main
from rasa.engine.bench import PeakMemory, bench_evaluate, random_batch
from rasa.models import create_model

SIZES = ["--image-size", "32", "16", "--patch-size", "8", "--vision-width", "32",
         "--vision-depth", "1", "--vision-heads", "2", "--vision-mlp", "64", "--text-width", "32",
         "--text-heads", "2", "--text-intermediate", "64", "--text-layers", "1",
         "--fusion-layers", "2", "--vocab-size", "60", "--queue-size", "16", "--embed-dim", "16",
         "--threads", "1"]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def _json_line(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def test_bench_train_step_takes_every_size_and_prints_one_json_line(capsys):
    args = ["bench", "train-step", "--variant", "m-rtd", "--batch-size", "4", *SIZES,
            "--caption-length", "5", "9", "--warmup", "1", "--repeats", "2"]  # fmt: skip
    assert main(args) == 0
    res = _json_line(capsys)
    assert res["model"] == (
        "image 32x16/8, ViT 1x32 (2 heads), BERT 1+2x32 (2 heads), vocab 60, embed 16, queue 16"
    )
    assert res["caption_length"] == [5, 9] and res["batch_size"] == 4
    assert res["seconds_per_step"] > 0 and res["gflop_per_step"] > 0
    assert res["rss_after_imports_mib"] > 0 and res["rss_after_model_mib"] > 0
    assert res["added_peak_mib"] >= 0 and res["added_peak_kind"].startswith("process_")
    assert len(res["losses"]) == 3 and all(v == v for v in res["losses"])  # finite, not NaN


def test_bench_evaluate_takes_every_size(capsys):
    args = ["bench", "evaluate", "--gallery", "9", "--queries", "7", "--k-test", "3",
            "--pair-batch", "4", "--naive-queries", "3", *SIZES]  # fmt: skip
    assert main(args) == 0
    res = _json_line(capsys)
    assert res["model_size"].startswith("image 32x16/8, ViT 1x32")
    assert (res["num_images"], res["num_queries"], res["k"], res["naive_queries"]) == (9, 7, 3, 3)
    assert res["max_abs_diff"] < 1e-5 and res["total_s"] > 0


def test_half_a_layer_split_is_a_clear_error(capsys):
    args = ["bench", "train-step", "--text-layers", "2", "--repeats", "1", "--no-flops"]
    assert main(args) == 2
    assert "--fusion-layers" in capsys.readouterr().err


def test_bench_evaluate_small():
    torch.manual_seed(0)
    model = create_model("tiny", image_size=(32, 16), queue_size=16)
    report = bench_evaluate(model, num_queries=12, num_images=7, k=3, caption_length=(3, 8),
                            pair_batch=5)  # fmt: skip
    assert report["num_queries"] == 12 and report["k"] == 3
    assert report["max_abs_diff"] < 1e-5
    for key in ("embed_s", "rerank_s", "rerank_ms_per_query", "naive_ms_per_query", "speedup"):
        assert report[key] > 0


def test_random_batch_caption_lengths():
    batch = random_batch(64, (32, 16), 50, caption_length=(4, 6), seed=1)
    lengths = batch["text1_mask"].sum(1)
    assert batch["text1_ids"].shape == (64, 6)
    assert int(lengths.min()) >= 4 and int(lengths.max()) <= 6
    rows = torch.arange(64)
    assert bool((batch["text1_ids"][rows, lengths - 1] == 3).all())  # [SEP] last
    assert bool((batch["text1_ids"][:, 0] == 2).all())  # [CLS] first


def test_cpu_peak_memory_counts_an_allocation_and_not_what_was_there_before():
    held = torch.ones(32 * 2**20 // 4)  # 32 MiB resident before the measurement
    memory = PeakMemory("cpu").start()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del x
    added = memory.added_mib()
    assert 60 <= added < 100 + 32, (added, memory.kind)
    del held


def test_cuda_peak_memory_path_uses_the_allocator_statistics(monkeypatch):
    """The CUDA branch, run on a CPU with the allocator statistics faked."""
    stats = {"allocated": 100 * 2**20, "peak": 100 * 2**20, "resets": 0}
    fake = {
        "synchronize": lambda device=None: None,
        "reset_peak_memory_stats": lambda device=None: stats.update(
            peak=stats["allocated"], resets=stats["resets"] + 1
        ),
        "memory_allocated": lambda device=None: stats["allocated"],
        "max_memory_allocated": lambda device=None: stats["peak"],
    }
    for name, fn in fake.items():
        monkeypatch.setattr(torch.cuda, name, fn)
    memory = PeakMemory("cuda").start()
    assert stats["resets"] == 1 and memory.kind == "cuda_max_allocated"
    stats["peak"] = 350 * 2**20  # a step that peaked 250 MiB above the start
    assert memory.added_mib() == pytest.approx(250.0)
    assert memory.peak_mib() == pytest.approx(350.0)


def test_gpu_check_dry_run_prints_every_figure(tmp_path):
    """scripts/gpu_check.sh --dry: the GPU check's commands at tiny sizes on the CPU."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(root / "scripts" / "gpu_check.sh"), "--dry", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc == json.loads(out.read_text()) and doc["dry"] is True
    step, ev = doc["train_step"], doc["evaluate"]
    assert step["dtype"] == "bf16" and step["autocast"] == "bfloat16"
    assert step["seconds_per_step"] > 0 and step["added_peak_mib"] >= 0
    assert ev["dtype"] == "bf16" and ev["compare"]["dtype"] == "fp32"
    assert 0 <= ev["agreement"]["top1_same"] <= 1 and len(ev["agreement"]["r1"]) == 2
    assert ev["max_abs_diff"] < 1e-2  # bf16 batched vs bf16 per-query loop
