"""The stability guard and the per-layer diagnostics: the reason this project exists.

Guard, per optimizer step:
* loss or gradient norm not finite → the step is skipped (no update) and counted;
* ``max_bad_steps`` such steps in a row → roll back to the last good checkpoint, LR × ``rollback_lr_factor``
  (the data position moves on past the bad batches, as PaLM does); after ``max_rollbacks`` the run stops;
* with ``on_nonfinite: stop`` the first non-finite step ends the run as diverged (stability study);
* loss > ``divergence_factor`` × running minimum → a divergence flag in the logs (and cleared when it falls back).

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
    running_min: float | None = None  # lowest finite loss so far
    flagged_at: int | None = None  # step where the loss rose above divergence_factor × running_min (None: not now)
    diverged_at: int | None = None  # step of the non-finite loss that stopped the run


class StabilityGuard:
    def __init__(self, config: TrainConfig, state: GuardState | None = None):
        self.config = config
        self.state = state or GuardState()

    @property
    def diverged(self) -> bool:
        """The run ended non-finite, or its loss is still far above its best."""
        return self.state.diverged_at is not None or self.state.flagged_at is not None

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

    def _watch_divergence(self, step: int, loss: float) -> list[dict]:
        state = self.state
        state.running_min = loss if state.running_min is None else min(state.running_min, loss)
        threshold = self.config.divergence_factor * state.running_min
        if loss > threshold and state.flagged_at is None:
            state.flagged_at = step
            return [{"event": "divergence", "step": step, "loss": loss, "running_min": state.running_min}]
        if loss <= threshold and state.flagged_at is not None:
            state.flagged_at = None
            return [{"event": "divergence_cleared", "step": step, "loss": loss}]
        return []

    def state_dict(self) -> dict:
        return dataclasses.asdict(self.state)

    @staticmethod
    def state_from(values: dict) -> GuardState:
        return GuardState(**values)
