"""From a training run's ``metrics.jsonl`` to a cell's curves and its divergence verdict.

A cell diverged when its loss became non-finite (the engine stops the run: ``on_nonfinite: stop``)
or when its training loss ended above where it started: the smoothed loss (trailing mean over
``SMOOTHING`` logged steps) ends more than ``START_MARGIN`` above the first logged loss, and the
step recorded is where it last crossed that line and stayed above. A spike that recovers is not a
divergence, and neither is a flat, noisy curve (a run that has not started to learn yet): the margin
is there because a loss near its starting value moves from step to step by up to ~0.4 % (measured on
4 × 32-token batches), which a strict "above the start" rule would call divergence.
"""

from __future__ import annotations

import math
from pathlib import Path

SMOOTHING = 5
START_MARGIN = 0.02  # relative: 2 % above the first loss
NONFINITE = "nonfinite"
LOSS_ABOVE_START = "loss_above_start"


def records_by_kind(path: Path) -> dict[str, list[dict]]:
    """The metrics file's records grouped by kind (train, valid, diagnostics, event), in file order.

    The engine truncates the file to the checkpoint it resumes from, so no step appears twice.
    """
    from ..train.metrics import read_metrics

    by_kind: dict[str, list[dict]] = {}
    for record in read_metrics(path):
        by_kind.setdefault(record.get("kind", ""), []).append(record)
    return by_kind


def as_float(value) -> float:
    """A logged number: the engine writes non-finite ones as the strings "nan" / "inf"; None is NaN."""
    return math.nan if value is None else float(value)


def curve(records: list[dict], key: str) -> list[list[float]]:
    """[[step, value], ...] of one field, skipping records that do not carry it."""
    return [[record["step"], as_float(record[key])] for record in records if key in record]


def find_divergence(train_loss: list[list[float]], nonfinite_at: int | None) -> tuple[str | None, int | None]:
    """(kind, step) of the divergence, or (None, None) for a run that trained (see the module docstring)."""
    if nonfinite_at is not None:
        return NONFINITE, nonfinite_at
    for step, loss in train_loss:
        if not math.isfinite(loss):
            return NONFINITE, int(step)
    if len(train_loss) < 2:
        return None, None
    line = train_loss[0][1] * (1 + START_MARGIN)
    losses = [loss for _, loss in train_loss]
    windows = [losses[max(0, i - SMOOTHING + 1) : i + 1] for i in range(len(losses))]
    smoothed = [sum(window) / len(window) for window in windows]
    if smoothed[-1] <= line:
        return None, None
    crossing = len(smoothed) - 1
    while crossing > 0 and smoothed[crossing - 1] > line:
        crossing -= 1
    return LOSS_ABOVE_START, int(train_loss[crossing][0])
