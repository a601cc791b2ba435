"""Training curves and the readable log of a run (rank 0 only).

``train_log.txt`` is a stream of time-stamped lines (config summary, every logged step, every
evaluation, signals); the per-step curves (losses per objective, lr, alpha, temperature) and the
per-evaluation figures (R@1 ... of val and test) go to dvclive in ``curve/`` so ``dvc plots
show`` works, or to ``curve/train.csv`` / ``curve/eval.jsonl`` when dvclive is off or missing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rasa.engine.metrics import flat_metrics


class CurveLogger:
    """Readable ``train_log.txt`` plus per-step curves (dvclive in ``curve/``; rank 0 only).

    Without dvclive, curves go to ``curve/train.csv`` / ``curve/eval.jsonl`` instead.
    The log is appended line by line (a stream, not a result file).
    """

    def __init__(self, out: Path, enabled: bool, resume: bool, dvclive: bool = True) -> None:
        self.enabled = enabled
        self.live = None
        self.csv_header: list[str] | None = None
        if not enabled:
            return
        self.out = out
        self.log_path = out / "train_log.txt"
        if not resume:
            self.log_path.write_text("", encoding="utf-8")
        try:
            if not dvclive:
                raise RuntimeError("disabled by the caller")
            from dvclive import Live

            # dvclive runs `dvc init` in the enclosing git repository when it is no DVC repo.
            self.live = Live(str(out / "curve"), resume=resume, save_dvc_exp=False, dvcyaml=False)
        except Exception as exc:  # noqa: BLE001 - any dvclive failure falls back to CSV
            self.text(f"dvclive unavailable ({type(exc).__name__}: {exc}); curves as CSV/JSONL")
            (out / "curve").mkdir(parents=True, exist_ok=True)

    def text(self, line: str) -> None:
        """Append a time-stamped line to ``train_log.txt``."""
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")

    def step(self, step: int, values: dict[str, float]) -> None:
        """Log the training values of optimizer step ``step`` (the log line and the curves)."""
        if not self.enabled:
            return
        self.text(f"step {step} " + " ".join(f"{k}={v:.5g}" for k, v in values.items()))
        if self.live is not None:
            self.live.step = step
            for k, v in values.items():
                self.live.log_metric(f"train/{k}", v)
            self.live.next_step()
            return
        path = self.out / "curve" / "train.csv"
        if self.csv_header is None:
            self.csv_header = ["step", *values]
            if not path.exists():
                path.write_text(",".join(self.csv_header) + "\n", encoding="utf-8")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(",".join(str(x) for x in [step, *values.values()]) + "\n")

    def eval(self, step: int | None, split: str, metrics: dict[str, Any]) -> None:
        """Log an evaluation of ``split``; ``step=None`` (the final test) goes to the log only."""
        if not self.enabled:
            return
        flat = flat_metrics(metrics)
        self.text(f"eval {split} step {step}: " + json.dumps(flat))
        if self.live is not None and step is not None:
            self.live.step = step
            for k, v in flat.items():
                self.live.log_metric(f"{split}/{k}", v)
            self.live.next_step()
        elif step is not None:
            with open(self.out / "curve" / "eval.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, "split": split, **flat}) + "\n")

    def close(self) -> None:
        """End the dvclive run (writes its plots)."""
        if self.live is not None:
            self.live.end()
