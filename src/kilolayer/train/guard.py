"""The stability guard and the per-layer diagnostics: the reason this project exists.

Guard, per optimizer step:
* loss or gradient norm not finite → the step is skipped (no update) and counted;
* ``max_bad_steps`` such steps in a row → roll back to the last good checkpoint, LR × ``rollback_lr_factor``
  (the data position moves on past the bad batches, as PaLM does); after ``max_rollbacks`` the run stops;
* with ``on_nonfinite: stop`` the first non-finite step ends the run as diverged (stability study);
* divergence flag: the smoothed loss (an exponential moving average, s ← 0.9·s + 0.1·loss, ~10 steps) above
  ``divergence_factor`` × its reference, the lowest smoothed loss since the last reset, raises a flag in the
  logs; it clears when s falls back. A rollback resets the reference (the run restarts from older weights).
  The flag is a warning: it never stops the run or blocks the export of the last weights.

The per-block diagnostics live in ``diagnostics.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .config import TrainConfig


@dataclass
class GuardState:
    consecutive_bad: int = 0
    skipped_steps: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0  # multiplies the scheduled LR; lowered at each rollback
    smoothed_loss: float | None = None  # exponential moving average of the finite step losses
    reference_loss: float | None = None  # lowest smoothed loss since the start or the last rollback
    flagged_at: int | None = None  # step where the smoothed loss rose above divergence_factor × reference (None: not now)
    diverged_at: int | None = None  # step of the non-finite loss that stopped the run


SMOOTHING = 0.9  # weight of the past in the smoothed loss: a spike of one step moves it by a tenth


class StabilityGuard:
    def __init__(self, config: TrainConfig, state: GuardState | None = None):
        self.config = config
        self.state = state or GuardState()

    @property
    def diverged(self) -> bool:
        """The run stopped on a non-finite loss (the divergence flag is only a warning)."""
        return self.state.diverged_at is not None

    def check(self, step: int, loss: float, grad_norm: float) -> tuple[str, list[dict]]:
        """The verdict on a computed step — "step", "skip", "rollback" or "stop" — and the events to log."""
        state, config = self.state, self.config
        if math.isfinite(loss) and math.isfinite(grad_norm):
            state.consecutive_bad = 0
            return "step", self._watch_divergence(step, loss)
        state.skipped_steps += 1
        state.consecutive_bad += 1
        events = [{"event": "skipped_step", "step": step, "loss": loss, "grad_norm": grad_norm, "consecutive": state.consecutive_bad}]
        if config.on_nonfinite == "stop":
            state.diverged_at = step
            events.append({"event": "stopped_nonfinite", "step": step})
            return "stop", events
        if state.consecutive_bad < config.max_bad_steps:
            return "skip", events
        if state.rollbacks >= config.max_rollbacks:
            state.diverged_at = step
            events.append({"event": "stopped_nonfinite", "step": step, "reason": f"still non-finite after {state.rollbacks} rollbacks"})
            return "stop", events
        return "rollback", events

    def rolled_back(self) -> None:
        self.state.rollbacks += 1
        self.state.lr_scale *= self.config.rollback_lr_factor
        self.state.consecutive_bad = 0
        self.reset_reference()

    def reset_reference(self) -> None:
        """Forget the smoothed loss and its reference (after a rollback the losses of older weights follow)."""
        self.state.smoothed_loss = self.state.reference_loss = self.state.flagged_at = None

    def _watch_divergence(self, step: int, loss: float) -> list[dict]:
        state = self.state
        smoothed = loss if state.smoothed_loss is None else SMOOTHING * state.smoothed_loss + (1 - SMOOTHING) * loss
        state.smoothed_loss = smoothed
        state.reference_loss = smoothed if state.reference_loss is None else min(state.reference_loss, smoothed)
        threshold = self.config.divergence_factor * state.reference_loss
        if smoothed > threshold and state.flagged_at is None:
            state.flagged_at = step
            return [{"event": "divergence", "step": step, "loss": loss, "smoothed_loss": smoothed, "reference_loss": state.reference_loss}]
        if smoothed <= threshold and state.flagged_at is not None:
            state.flagged_at = None
            return [{"event": "divergence_cleared", "step": step, "loss": loss, "smoothed_loss": smoothed}]
        return []

    def state_dict(self) -> dict:
        return dataclasses.asdict(self.state)

    @staticmethod
    def state_from(values: dict) -> GuardState:
        """The state saved in a checkpoint (keys of older versions, such as running_min, are dropped)."""
        known = {field.name for field in dataclasses.fields(GuardState)}
        return GuardState(**{key: value for key, value in values.items() if key in known})
