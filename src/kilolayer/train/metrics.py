"""Run logs: ``metrics.jsonl`` (one JSON object per line, with a ``kind``), TensorBoard, and the loss-curve PNG.

Kinds: ``train`` (step, loss, lr, grad_norm, tokens_per_s, step_seconds), ``valid`` (step, loss, ppl),
``diagnostics`` (step, per-layer summaries), ``event`` (start, resume, checkpoint, skipped_step,
rollback, divergence, stop, export). Non-finite numbers are written as the strings "nan" / "inf".
Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

from ..atomic import write_text

METRICS = "metrics.jsonl"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def read_metrics(path: Path) -> list[dict]:
    """All records of a metrics file (a torn last line, from a killed writer, is ignored)."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def truncate_after_checkpoint(path: Path, step: int) -> None:
    """Keep the records up to the ``checkpoint`` event of ``step`` (the resumed state); the rest is re-logged.

    Without that event (the log was lost or is older), keep the records whose step is ≤ ``step``.
    """
    records = read_metrics(path)
    marks = [i for i, r in enumerate(records) if r.get("kind") == "event" and r.get("event") == "checkpoint" and r.get("step") == step]
    kept = records[: marks[-1] + 1] if marks else [r for r in records if r.get("step", 0) <= step]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLog:
    """metrics.jsonl + TensorBoard (``out_dir/tensorboard``); inert on ranks other than 0."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int | None):
        self.path = out_dir / METRICS
        self.enabled = enabled
        self.file = None
        self.tensorboard = None
        if not enabled:
            return
        if resume_step is None:  # a fresh start (possibly over a run that died before its first checkpoint)
            self.path.unlink(missing_ok=True)
            shutil.rmtree(out_dir / "tensorboard", ignore_errors=True)
        else:
            truncate_after_checkpoint(self.path, resume_step)
        self.file = open(self.path, "a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1  # TensorBoard drops the events logged after the checkpoint
        self.tensorboard = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge)

    def write(self, kind: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, **_jsonable(fields), "time": round(time.time(), 3)}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = fields.get("step", 0)
        if kind in ("train", "valid"):
            for key, value in fields.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(f"{kind}/{key}", value, step)
        elif kind == "event":
            self.tensorboard.add_text("events", json.dumps(record), step)

    def write_diagnostics(self, step: int, per_layer: dict[str, list[float]], summarize) -> None:
        """One ``diagnostics`` record of summaries; TensorBoard also gets the full per-layer histograms."""
        if not self.enabled:
            return
        self.write("diagnostics", step=step, **{name: summarize(values) for name, values in per_layer.items()})
        import numpy as np

        for name, values in per_layer.items():
            finite = np.asarray(values, dtype=np.float64)
            finite = finite[np.isfinite(finite)]
            if finite.size:
                self.tensorboard.add_histogram(f"layers/{name}", finite, step)
                self.tensorboard.add_scalar(f"layers/{name}_max", float(finite.max()), step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tensorboard.close()


def plot_loss_curve(metrics_path: Path, png_path: Path, title: str) -> Path:
    """Train loss (per logged window) and valid loss against the step; rollbacks as vertical lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)

    def series(kind: str) -> tuple[list[int], list[float]]:
        points = [(r["step"], r["loss"]) for r in records if r.get("kind") == kind and isinstance(r.get("loss"), (int, float))]
        return [p[0] for p in points], [p[1] for p in points]

    figure = Figure(figsize=(8, 4.5), dpi=120)  # no pyplot: the process's matplotlib backend stays the caller's
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    train_steps, train_losses = series("train")
    valid_steps, valid_losses = series("valid")
    axes.plot(train_steps, train_losses, label="train", linewidth=1.2)
    if valid_steps:
        axes.plot(valid_steps, valid_losses, "o-", label="valid", markersize=4)
    for record in records:
        if record.get("kind") == "event" and record.get("event") == "rollback":
            axes.axvline(record["step"], color="red", alpha=0.4, linestyle="--")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy loss (nats/token)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(png_path)
    return png_path
