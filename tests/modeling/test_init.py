"""Init statistics follow each scheme's rule, applied by role (a fused QKV slice by slice)."""

import math

import pytest
import torch

from kilolayer.modeling import KiloConfig, KiloForCausalLM

N, HIDDEN = 1000, 64


@pytest.fixture(scope="module")
def deepnorm_1000():
    torch.manual_seed(0)
    config = KiloConfig(num_layers=N, hidden_size=HIDDEN, num_heads=2, vocab_size=128, max_positions=16,
                        scheme="deepnorm")
    return KiloForCausalLM(config)


def xavier_std(rows, cols, gain):
    return gain * math.sqrt(2.0 / (rows + cols))


def pooled_std(tensors):
    return torch.cat([t.flatten() for t in tensors]).std().item()


def test_deepnorm_beta_scaled_weights_match_xavier_normal_with_gain_beta(deepnorm_1000):
    beta = (8 * N) ** -0.25
    assert deepnorm_1000.config.beta == pytest.approx(beta)
    layers = deepnorm_1000.model.layers
    value = pooled_std(layer.attention.qkv.weight[2 * HIDDEN:] for layer in layers)
    attn_out = pooled_std(layer.attention.out.weight for layer in layers)
    ffn_in = pooled_std(layer.ffn.fc_in.weight for layer in layers)
    ffn_out = pooled_std(layer.ffn.fc_out.weight for layer in layers)
    assert value == pytest.approx(xavier_std(HIDDEN, HIDDEN, beta), rel=0.05)
    assert attn_out == pytest.approx(xavier_std(HIDDEN, HIDDEN, beta), rel=0.05)
    assert ffn_in == pytest.approx(xavier_std(4 * HIDDEN, HIDDEN, beta), rel=0.05)
    assert ffn_out == pytest.approx(xavier_std(HIDDEN, 4 * HIDDEN, beta), rel=0.05)


def test_deepnorm_query_and_key_keep_gain_one(deepnorm_1000):
    layers = deepnorm_1000.model.layers
    query = pooled_std(layer.attention.qkv.weight[:HIDDEN] for layer in layers)
    key = pooled_std(layer.attention.qkv.weight[HIDDEN:2 * HIDDEN] for layer in layers)
    assert query == pytest.approx(xavier_std(HIDDEN, HIDDEN, 1.0), rel=0.05)
    assert key == pytest.approx(xavier_std(HIDDEN, HIDDEN, 1.0), rel=0.05)


def small(scheme, layers=8):
    torch.manual_seed(0)
    return KiloForCausalLM(KiloConfig(num_layers=layers, hidden_size=HIDDEN, num_heads=2, vocab_size=128,
                                      max_positions=16, scheme=scheme))


def test_pre_ln_scales_residual_out_projections_by_one_over_sqrt_2n():
    model = small("pre_ln", layers=50)
    layers = model.model.layers
    assert pooled_std(layer.attention.qkv.weight for layer in layers) == pytest.approx(0.02, rel=0.05)
    expected = 0.02 / math.sqrt(2 * 50)
    assert pooled_std(layer.attention.out.weight for layer in layers) == pytest.approx(expected, rel=0.05)
    assert pooled_std(layer.ffn.fc_out.weight for layer in layers) == pytest.approx(expected, rel=0.05)


def test_sub_ln_gain_is_sqrt_log_2n():
    model = small("sub_ln", layers=50)
    gamma = math.sqrt(math.log(100))
    layers = model.model.layers
    assert pooled_std(layer.ffn.fc_in.weight for layer in layers) == pytest.approx(
        xavier_std(4 * HIDDEN, HIDDEN, gamma), rel=0.05)
    assert len({type(layer.ffn.inner_norm).__name__ for layer in layers}) == 1


@pytest.mark.parametrize("scheme", ["upscale_ln", "foundation_ln", "post_ln"])
def test_normal_init_schemes(scheme):
    model = small(scheme, layers=20)
    layers = model.model.layers
    for weights in (
        [layer.attention.qkv.weight for layer in layers],
        [layer.ffn.fc_out.weight for layer in layers],
    ):
        assert pooled_std(weights) == pytest.approx(0.02, rel=0.05)


def test_rezero_gates_start_at_zero_and_biases_at_zero():
    model = small("rezero")
    assert all(layer.attention_residual.gate.item() == 0.0 for layer in model.model.layers)
    assert all(layer.ffn.fc_in.bias.abs().max().item() == 0.0 for layer in model.model.layers)
