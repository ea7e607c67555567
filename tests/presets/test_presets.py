"""Presets resolve, describe what the paper describes, and reject typos."""

import subprocess
import sys

import pytest
import torch

from kilolayer.errors import KiloError
from kilolayer.modeling import KiloForCausalLM, KiloForMaskedLM
from kilolayer.presets import build_model_config, list_presets, resolve_config
from kilolayer.train.config import TrainConfig


def parameter_count(preset: str) -> int:
    config = build_model_config(resolve_config(preset)["model"])
    with torch.device("meta"):
        model = (KiloForCausalLM if config.is_causal else KiloForMaskedLM)(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_builds_a_valid_config(preset):
    config = resolve_config(preset)
    build_model_config(config["model"])
    TrainConfig.from_dict(config["train"])


def test_gpt_1k_has_the_papers_parameter_count():
    # 1000 x 789,760 per layer + 2 x 50257 x 256 untied embeddings (the paper's 815.5M)
    assert parameter_count("gpt-1k") == 1000 * 789_760 + 2 * 50257 * 256


def test_paper_presets_use_the_papers_schemes_and_shapes():
    gpt = build_model_config(resolve_config("gpt-1k")["model"])
    bert = build_model_config(resolve_config("bert-1k")["model"])
    assert (gpt.num_layers, gpt.hidden_size, gpt.num_heads, gpt.scheme, gpt.alpha) == (1000, 256, 1, "foundation_ln", 0.974)
    assert (bert.num_layers, bert.hidden_size, bert.num_heads, bert.scheme) == (1000, 64, 2, "upscale_ln")
    assert bert.alpha == pytest.approx(2000 ** 0.25)


def test_overrides_apply_in_order_and_parse_numbers(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  num_layers: 24\ntrain:\n  lr: 1e-3\n")
    config = resolve_config("gpt-tiny", str(extra), ["model.num_layers=6", "train.grad_clip=null"])
    assert config["model"]["num_layers"] == 6
    train = TrainConfig.from_dict(config["train"])
    assert train.lr == 1e-3 and train.grad_clip is None


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: resolve_config("gpt-2k"), "unknown preset 'gpt-2k'; known presets:"),
        (lambda: resolve_config("gpt-tiny", overrides=["num_layers=3"]), "expected section.key=value"),
        (lambda: build_model_config({"num_layer": 3}), "unknown model key 'num_layer'; did you mean num_layers"),
        (lambda: TrainConfig.from_dict({"lr": "fast"}), "train key 'lr' must be a float"),
        (lambda: TrainConfig.from_dict({"learning_rate": 1.0}), "unknown train key 'learning_rate'"),
        (lambda: build_model_config({"num_heads": 3, "hidden_size": 32}), "invalid model config: num_heads (3)"),
    ],
)
def test_bad_configuration_is_a_one_line_kilo_error(call, message):
    with pytest.raises(KiloError) as raised:
        call()
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_info_command_prints_the_parameter_count():
    result = subprocess.run(
        [sys.executable, "-m", "kilolayer", "info", "--preset", "gpt-1k"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "parameters: 815,491,584" in result.stdout


def test_info_times_an_encoder_decoder_step_on_span_corruption_shapes():
    result = subprocess.run(
        [sys.executable, "-m", "kilolayer", "info", "--preset", "encdec-tiny", "--step", "2x32"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("encdec 2+2x32") and "second step (forward+backward, 2x32)" in result.stdout


def test_info_command_rejects_a_typo_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "kilolayer", "info", "--preset", "gpt-tiny", "--set", "model.shceme=pre_ln"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "kilolayer info: error: unknown model key 'shceme'; did you mean scheme?"
