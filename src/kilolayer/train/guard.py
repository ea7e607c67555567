"""The stability guard and the per-layer diagnostics: the reason this project exists.

Guard, per optimizer step:
* loss or gradient norm not finite → the step is skipped (no update) and counted;
* ``max_bad_steps`` such steps in a row → roll back to the last good checkpoint, LR × ``rollback_lr_factor``
  (the data position moves on past the bad batches, as PaLM does); after ``max_rollbacks`` the run stops;
* with ``on_nonfinite: stop`` the first non-finite step ends the run as diverged (stability study);
* loss > ``divergence_factor`` × running minimum → a divergence flag in the logs (and cleared when it falls back).

Diagnostics, every ``diagnostics_every`` steps, per block ℓ: ‖∇θ_ℓ‖ (before clipping), ‖Δθ_ℓ‖ (the update
the optimizer applied) and the RMS of the residual stream after block ℓ. Norms come from one
``torch._foreach_norm`` over all block tensors and one ``index_add_`` per quantity: no per-layer syncs.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

import torch
from torch import nn

from . import distributed
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


class LayerDiagnostics:
    """Per-block norms of gradients, updates and activations, summarized over the depth."""

    def __init__(self, model: nn.Module, parallel: distributed.Parallel):
        blocks = model.model.layers
        self.parameters = [p for block in blocks for p in block.parameters()]
        owner = [index for index, block in enumerate(blocks) for _ in block.parameters()]
        self.owner = torch.tensor(owner, device=parallel.device)
        self.num_layers = len(blocks)
        self.parallel = parallel

    def _per_layer(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """√(Σ over each block's tensors of ‖t‖²), summed over shards under FSDP."""
        squares = torch.stack(torch._foreach_norm([distributed.local_tensor(t) for t in tensors])).float().square()
        per_layer = torch.zeros(self.num_layers, device=squares.device).index_add_(0, self.owner, squares)
        if self.parallel.sharded:
            self.parallel.all_reduce_sum(per_layer)
        return per_layer.sqrt()

    def grad_norms(self) -> torch.Tensor:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        return self._per_layer(grads)

    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the block parameters, taken before the optimizer step."""
        return [t.clone() for t in (distributed.local_tensor(p.detach()) for p in self.parameters)]

    def update_norms(self, before: list[torch.Tensor]) -> torch.Tensor:
        after = [distributed.local_tensor(p.detach()) for p in self.parameters]
        return self._per_layer(torch._foreach_sub(after, before))

    @staticmethod
    def activation_rms(hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """RMS of the residual stream after each block: ‖h_ℓ‖ / √numel.

        ``hidden_states[0]`` is the embedding output; the last entry is after the final norm, for the
        schemes that have one. Norms are taken in the stream's dtype (no fp32 copy of 1000 activations).
        """
        outputs = [h.detach() for h in hidden_states[1:]]
        norms = torch.stack(torch._foreach_norm(outputs)).float()
        return norms / math.sqrt(outputs[0].numel())

    @staticmethod
    def summarize(values: list[float]) -> dict:
        """first / last layer, min / median / max over layers, and where the extremes sit (0-based)."""
        lowest = min(range(len(values)), key=values.__getitem__)
        highest = max(range(len(values)), key=values.__getitem__)
        return {
            "first": values[0],
            "last": values[-1],
            "min": values[lowest],
            "median": statistics.median(values),
            "max": values[highest],
            "argmin": lowest,
            "argmax": highest,
        }
