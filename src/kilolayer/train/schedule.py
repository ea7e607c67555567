"""Learning-rate schedules: linear warmup, then cosine, linear, inverse-sqrt decay or constant.

A pure function of the step, so a resumed run needs no scheduler state beyond the step and the
guard's rollback scale. ``step`` is the 0-based index of the optimizer step about to be taken.
"""

from __future__ import annotations

import math

from .config import TrainConfig


def lr_factor(config: TrainConfig, step: int) -> float:
    """The multiplier of ``config.lr`` at ``step``.

    warmup (s < W):  (s + 1) / W
    then, with progress p = (s − W) / (D − W) clamped to [0, 1], D = decay_steps (max_steps when unset)
    and floor m = min_lr_ratio:
      cosine:        m + (1 − m) · ½ (1 + cos πp)
      linear:        1 − (1 − m) · p
      inverse_sqrt:  √(max(W, 1) / (s + 1))     (fairseq's; no floor)
      constant:      1
    """
    warmup = config.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    floor = config.min_lr_ratio
    horizon = config.decay_steps if config.decay_steps is not None else config.max_steps
    progress = min(max((step - warmup) / max(horizon - warmup, 1), 0.0), 1.0)
    if config.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if config.schedule == "linear":
        return 1 - (1 - floor) * progress
    if config.schedule == "inverse_sqrt":
        return math.sqrt(max(warmup, 1) / (step + 1))
    return 1.0


def learning_rate(config: TrainConfig, step: int, lr_scale: float = 1.0) -> float:
    """config.lr × lr_factor × lr_scale (the stability guard lowers lr_scale at every rollback)."""
    return config.lr * lr_factor(config, step) * lr_scale
