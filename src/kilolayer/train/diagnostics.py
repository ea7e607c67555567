"""Per-block diagnostics: does each of the N blocks still learn from the data?

Every ``diagnostics_every`` steps, per block ℓ:

* ‖∇θ_ℓ‖ before clipping, and its RMS ‖∇θ_ℓ‖/√n_ℓ compared with Adam's ε: a block whose gradient
  RMS is below ε gets updates ≈ lr·g/ε, i.e. none that come from the data;
* ‖θ_ℓ‖ and ‖Δθ_ℓ‖ (the update the optimizer applied), and their ratio ‖Δθ_ℓ‖/‖θ_ℓ‖;
* the RMS of the residual stream after the block, and the mean LayerNorm gain inside it.

Norms are accumulated in float64 from float32 tensors, so that 0 means 0: in float32, with
denormals flushed (as kilolayer does on CPU), the square of an element below ~1e-19 is 0 and a
gradient of 1e-22 read as exactly 0. Update norms alone cannot tell a dead block (Adam keeps
applying stale momentum), hence the gradient-against-ε and the within-k-decades counts.

``usage`` turns the per-block values into counts a reader can act on (see ``LayerUsage``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import distributed

DECADES = 3.0  # a block is "used" when its gradient and its update/weight ratio are within 10^3 of the best block's
COLLAPSE_RATIO = 1e-10  # the first block's gradient below 1e-10 of the last block's: the stack has collapsed


@dataclass(frozen=True)
class LayerUsage:
    """How many blocks learn, from one diagnostics snapshot.

    live_blocks: gradient RMS above Adam's ε. used_blocks: gradient norm and update/weight ratio both
    within ``DECADES`` decades of the best block's. first_over_last: first block's gradient norm over the last's.
    """

    blocks: int
    live_blocks: int
    used_blocks: int
    first_over_last: float

    @property
    def live_fraction(self) -> float:
        return self.live_blocks / self.blocks

    @property
    def collapsed(self) -> bool:
        return self.first_over_last < COLLAPSE_RATIO

    def to_dict(self) -> dict:
        return asdict(self)


def within_decades(values: list[float], decades: float = DECADES) -> list[bool]:
    """Which values are within ``decades`` powers of ten of the largest (a zero never is)."""
    best = max(values)
    return [value > 0 and best > 0 and math.log10(best / value) <= decades for value in values]


def usage(grad_norm: list[float], grad_rms: list[float], update_ratio: list[float], adam_eps: float) -> LayerUsage:
    used = [g and u for g, u in zip(within_decades(grad_norm), within_decades(update_ratio))]
    first, last = grad_norm[0], grad_norm[-1]
    return LayerUsage(
        blocks=len(grad_norm),
        live_blocks=sum(rms > adam_eps for rms in grad_rms),
        used_blocks=sum(used),
        first_over_last=first / last if last > 0 else (math.inf if first > 0 else 1.0),
    )


class LayerDiagnostics:
    """Per-block norms of gradients, parameters, updates and activations of ``model.model.layers``."""

    def __init__(self, model: nn.Module, parallel: distributed.Parallel):
        blocks = model.model.layers
        self.parameters = [p for block in blocks for p in block.parameters()]
        owner = [index for index, block in enumerate(blocks) for _ in block.parameters()]
        self.owner = torch.tensor(owner, device=parallel.device)
        self.num_layers = len(blocks)
        self.parallel = parallel
        sizes = torch.zeros(self.num_layers, dtype=torch.float64)
        sizes.index_add_(0, self.owner.cpu(), torch.tensor([float(p.numel()) for p in self.parameters], dtype=torch.float64))
        self.sizes = sizes.to(parallel.device)  # parameters per block (global, before any sharding)
        self.norm_gains = [
            [m.weight for m in block.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None]
            for block in blocks
        ]

    def _per_layer(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """√(Σ over each block's tensors of ‖t‖²) in float64, summed over shards under FSDP."""
        local = [distributed.local_tensor(t) for t in tensors]
        squares = torch.stack(torch._foreach_norm(local, 2, dtype=torch.float64)).square()
        per_layer = torch.zeros(self.num_layers, dtype=torch.float64, device=squares.device).index_add_(0, self.owner, squares)
        if self.parallel.sharded:
            self.parallel.all_reduce_sum(per_layer)
        return per_layer.sqrt()

    def grad_norms(self) -> torch.Tensor:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        return self._per_layer(grads)

    def grad_rms(self, grad_norms: torch.Tensor) -> torch.Tensor:
        return grad_norms / self.sizes.sqrt()

    def parameter_norms(self) -> torch.Tensor:
        return self._per_layer([p.detach() for p in self.parameters])

    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the block parameters, taken before the optimizer step."""
        return [t.clone() for t in (distributed.local_tensor(p.detach()) for p in self.parameters)]

    def update_norms(self, before: list[torch.Tensor]) -> torch.Tensor:
        after = [distributed.local_tensor(p.detach()) for p in self.parameters]
        return self._per_layer(torch._foreach_sub(after, before))

    def norm_gain_means(self) -> list[float]:
        """Mean LayerNorm/RMSNorm gain γ inside each block (NaN for blocks without norms, e.g. rezero)."""
        means = []
        for gains in self.norm_gains:
            local = [distributed.full_tensor(g.detach()).double() for g in gains]
            means.append(float(torch.cat([g.flatten() for g in local]).mean()) if local else math.nan)
        return means

    @staticmethod
    def activation_rms(hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """RMS of the residual stream after each block: ‖h_ℓ‖ / √numel.

        ``hidden_states[0]`` is the embedding output; the last entry is after the final norm, for the
        schemes that have one.
        """
        outputs = [h.detach() for h in hidden_states[1:]]
        norms = torch.stack(torch._foreach_norm(outputs, 2, dtype=torch.float64))
        return norms / math.sqrt(outputs[0].numel())

    @staticmethod
    def summarize(values: list[float]) -> dict:
        """first / last layer, min / median / max over layers, and where the extremes sit (0-based)."""
        finite = [i for i, value in enumerate(values) if math.isfinite(value)]
        if not finite:
            return {"first": values[0], "last": values[-1]}
        lowest = min(finite, key=values.__getitem__)
        highest = max(finite, key=values.__getitem__)
        return {
            "first": values[0],
            "last": values[-1],
            "min": values[lowest],
            "median": statistics.median(values[i] for i in finite),
            "max": values[highest],
            "argmin": lowest,
            "argmax": highest,
        }


def context_shuffled(batch: dict[str, torch.Tensor], roll_whole_input: bool) -> dict[str, torch.Tensor]:
    """The batch with each sequence's context taken from the next sequence in the batch, labels unchanged.

    Context gain = loss(shuffled) − loss(real): how much the model's predictions depend on *this*
    sequence's tokens. A model that ignores its input (a collapsed stack, a unigram model) scores 0.
    ``roll_whole_input`` (GPT; an encoder-decoder's encoder input, its decoder side kept): every input row
    is rolled. Otherwise (masked LM) the scored ([MASK]ed) positions keep their inputs and only the
    unmasked context is rolled, so the model still sees where it must predict.
    """
    shuffled = dict(batch)
    rolled = batch["input_ids"].roll(1, dims=0)
    if roll_whole_input:
        shuffled["input_ids"] = rolled
    else:
        shuffled["input_ids"] = torch.where(batch["labels"] != -100, batch["input_ids"], rolled)
    if "attention_mask" in batch:
        shuffled["attention_mask"] = batch["attention_mask"].roll(1, dims=0) if shuffled["input_ids"] is rolled else batch["attention_mask"]
    return shuffled
