"""Parameter counts and the width that keeps a parameter budget at a given depth.

Counts come from the real model classes instantiated on the meta device (no memory, milliseconds),
so they can never drift from the architecture. Every block has the same parameters, so a model of
N layers has ``count(1 layer) + (N - 1) · (count(2 layers) - count(1 layer))`` of them: exact at
any depth without building 1000 blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import KiloError
from ..presets import build_model_config

TARGET_FFN_RATIO = 4  # ffn_size ≈ 4 · width, as in BERT and GPT-2


def _count_instance(model_section: dict, num_layers: int) -> int:
    from ..modeling import KiloForCausalLM, KiloForMaskedLM

    config = build_model_config(model_section, num_layers=num_layers)
    model_class = KiloForCausalLM if config.arch == "gpt" else KiloForMaskedLM
    with torch.device("meta"):
        model = model_class(config)
    return sum(parameter.numel() for parameter in model.parameters())  # tied weights counted once


def count_parameters(model_section: dict) -> int:
    """Exact parameter count of the pretraining model (GPT: causal LM, BERT: masked LM) of a model section."""
    num_layers = build_model_config(model_section).num_layers
    one, two = _count_instance(model_section, 1), _count_instance(model_section, 2)
    return one + (num_layers - 1) * (two - one)


@dataclass(frozen=True)
class Shape:
    """A model shape that fits a budget, with the count it actually reaches."""

    num_layers: int
    hidden_size: int
    ffn_size: int
    num_heads: int
    parameters: int

    def model_overrides(self) -> dict:
        return {"num_layers": self.num_layers, "hidden_size": self.hidden_size, "ffn_size": self.ffn_size}


def width_step(model_section: dict) -> int:
    """Widths must be a multiple of the head count, and of twice it with rotary positions (even head size)."""
    config = build_model_config(model_section)
    return config.num_heads * (2 if config.position_embedding == "rotary" else 1)


def shape_for_budget(model_section: dict, num_layers: int, budget: int) -> Shape:
    """The shape with ``num_layers`` layers whose parameter count is closest to ``budget``.

    The width is the multiple of ``width_step`` nearest the budget with ffn = 4 · width; the FFN size
    then absorbs the remainder (each FFN unit is only N · (2 · width + 1) parameters), so every depth
    lands within a hair of the budget even where one width step is worth more than 5 % of it. Of the
    two widths around the budget, the one that needs the smaller FFN correction wins.
    """
    step = width_step(model_section)
    heads = build_model_config(model_section).num_heads

    def section(width: int, ffn: int) -> dict:
        return {**model_section, "num_layers": num_layers, "hidden_size": width, "ffn_size": ffn}

    def count_at_ratio(multiple: int) -> int:
        width = multiple * step
        return count_parameters(section(width, TARGET_FFN_RATIO * width))

    if count_at_ratio(1) > budget:
        raise KiloError(
            f"a {num_layers}-layer model cannot fit {budget:,} parameters: the narrowest one "
            f"(width {step}) already has {count_at_ratio(1):,}; raise the budget or drop this depth"
        )
    low, high = 1, 2
    while count_at_ratio(high) <= budget:  # grow until the budget is bracketed
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if count_at_ratio(middle) <= budget else (low, middle)

    candidates = []
    for multiple in (low, high):
        width = multiple * step
        base_ffn = TARGET_FFN_RATIO * width
        base_count = count_parameters(section(width, base_ffn))
        per_ffn_unit = count_parameters(section(width, base_ffn + 1)) - base_count
        ffn = max(1, base_ffn + round((budget - base_count) / per_ffn_unit))
        count = base_count + (ffn - base_ffn) * per_ffn_unit
        candidates.append((abs(ffn - base_ffn) / width, Shape(num_layers, width, ffn, heads, count)))
    return min(candidates, key=lambda candidate: candidate[0])[1]
