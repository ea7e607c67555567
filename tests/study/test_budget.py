"""The depth study's width derivation: every depth lands within 5 % of the parameter budget."""

from __future__ import annotations

import pytest

from kilolayer.errors import KiloError
from kilolayer.modeling import KiloForCausalLM, KiloForMaskedLM
from kilolayer.presets import build_model_config, load_preset
from kilolayer.study.budget import count_parameters, shape_for_budget, width_step

DEPTHS = (1, 2, 6, 24, 96, 384, 1000)


def test_count_matches_the_instantiated_model():
    for preset, model_class in (("gpt-tiny", KiloForCausalLM), ("bert-tiny", KiloForMaskedLM)):
        section = load_preset(preset)["model"]
        model = model_class(build_model_config(section))
        assert count_parameters(section) == sum(parameter.numel() for parameter in model.parameters())


def test_gpt_1k_preset_has_the_papers_count():
    assert count_parameters(load_preset("gpt-1k")["model"]) == 815_491_584  # 1000 x 789,760 + 2 x 50257 x 256


@pytest.mark.parametrize("preset", ["gpt-1k-cpu", "bert-1k-cpu", "gpt-1k"])
def test_every_depth_within_five_percent_of_the_budget(preset):
    section = load_preset(preset)["model"]
    budget = count_parameters(section)
    step = width_step(section)
    for depth in DEPTHS:
        shape = shape_for_budget(section, depth, budget)
        achieved = count_parameters({**section, **shape.model_overrides()})
        assert achieved == shape.parameters
        assert abs(achieved - budget) / budget < 0.05, (depth, shape)
        assert shape.hidden_size % step == 0 and shape.hidden_size % shape.num_heads == 0
        assert 3 <= shape.ffn_size / shape.hidden_size <= 5, (depth, shape)
        build_model_config({**section, **shape.model_overrides()})  # a valid config (head size even for rotary)


def test_small_budget_with_coarse_width_steps_still_lands_within_five_percent():
    """4 heads + rotary: widths move in steps of 8, worth ~25 % of a 64-wide model; the FFN absorbs it."""
    section = {**load_preset("gpt-tiny")["model"], "num_heads": 4, "hidden_size": 64, "num_layers": 8}
    budget = count_parameters(section)
    for depth in (2, 4, 8, 16, 32):
        shape = shape_for_budget(section, depth, budget)
        assert abs(shape.parameters - budget) / budget < 0.05, (depth, shape)


def test_the_shape_at_the_presets_own_depth_is_the_preset():
    section = load_preset("gpt-1k-cpu")["model"]
    shape = shape_for_budget(section, 1000, count_parameters(section))
    assert (shape.hidden_size, shape.ffn_size) == (64, 256)


def test_a_budget_too_small_for_the_depth_is_a_clear_error():
    section = load_preset("gpt-1k-cpu")["model"]
    with pytest.raises(KiloError, match="cannot fit"):
        shape_for_budget(section, 1000, 100_000)


def test_counting_1000_layers_is_fast():
    import time

    section = load_preset("gpt-1k")["model"]
    started = time.perf_counter()
    shape_for_budget(section, 1000, 815_491_584)
    assert time.perf_counter() - started < 5
