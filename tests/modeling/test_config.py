"""Bad configs raise one-line ValueErrors at construction; constants are never re-derived."""

import pytest

from kilolayer.modeling import KiloConfig

BASE = dict(num_layers=4, hidden_size=32, num_heads=2, vocab_size=64, max_positions=16)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"num_heads": 3}, "num_heads (3) must divide hidden_size (32)"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"scheme": "postln"}, "unknown scheme 'postln'; known schemes: post_ln, pre_ln, deepnorm"),
        ({"scheme": "deepnorm", "alpha": 0.0}, "alpha must be > 0"),
        ({"scheme": "deepnorm", "alpha": -1.0}, "alpha must be > 0"),
        ({"scheme": "pre_ln", "alpha": 2.0}, "scheme 'pre_ln' takes no alpha"),
        ({"scheme": "upscale_ln", "beta": 0.5}, "scheme 'upscale_ln' takes no beta"),
        ({"scheme": "mix_ln", "post_ln_fraction": 1.5}, "post_ln_fraction must be in [0, 1], got 1.5"),
        ({"scheme": "pre_ln", "post_ln_fraction": 0.5}, "scheme 'pre_ln' takes no post_ln_fraction"),
        ({"scheme": "depth_scaled", "branch_exponent": -0.5}, "branch_exponent must be >= 0"),
        ({"scheme": "pre_ln", "dyt_alpha": 0.5}, "dyt_alpha is the initial α of norm: dyt, but norm is 'layernorm'"),
        ({"norm": "dyt", "dyt_alpha": 0.0}, "dyt_alpha must be > 0"),
        ({"arch": "t5"}, "arch must be one of gpt, bert"),
        ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm"),
        ({"position_embedding": "alibi"}, "position_embedding must be one of learned, rotary"),
        ({"hidden_dropout": 1.5}, "hidden_dropout must be in [0, 1)"),
        ({"position_embedding": "rotary", "hidden_size": 6, "num_heads": 2}, "rotary positions need an even head size"),
    ],
)
def test_invalid_config_raises_one_line_error(changes, message):
    with pytest.raises(ValueError) as raised:
        KiloConfig(**{**BASE, **changes})
    text = str(raised.value)
    assert message in text
    assert "\n" not in text


def test_explicit_constants_are_kept():
    config = KiloConfig(**BASE, scheme="deepnorm", alpha=3.0, beta=0.1)
    assert (config.alpha, config.beta) == (3.0, 0.1)


def test_constants_survive_a_json_round_trip_even_if_depth_changes(tmp_path):
    config = KiloConfig(**BASE, scheme="deepnorm")
    config.save_pretrained(tmp_path)
    reloaded = KiloConfig.from_pretrained(tmp_path, num_layers=100)
    assert reloaded.alpha == config.alpha and reloaded.beta == config.beta


def test_family_defaults():
    gpt, bert = KiloConfig(**BASE, arch="gpt"), KiloConfig(**BASE, arch="bert")
    assert (gpt.type_vocab_size, gpt.embedding_norm, gpt.is_causal) == (0, False, True)
    assert (bert.type_vocab_size, bert.embedding_norm, bert.is_causal) == (2, True, False)
    assert gpt.ffn_size == 4 * 32


def test_unknown_keywords_raise_but_transformers_own_keys_pass(tmp_path):
    import pytest
    from transformers import AutoConfig

    with pytest.raises(TypeError, match="unknown keyword 'num_layer'; did you mean num_layers"):
        KiloConfig(num_layer=3)
    with pytest.raises(ValueError, match="hidden_act 'bogus'"):
        KiloConfig(hidden_act="bogus")
    config = KiloConfig(num_layers=2, hidden_size=32, num_heads=2, vocab_size=100, num_labels=3, torch_dtype="float32")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path, output_hidden_states=True, attn_implementation="sdpa")
    assert (loaded.num_layers, loaded.num_labels, loaded.output_hidden_states) == (2, 3, True)
