"""500 + 500 layers: init statistics follow DeepNet's encoder-decoder formulas; forward and backward stay finite."""

import math

import pytest
import torch

from kilolayer.modeling import KiloConfig, KiloForConditionalGeneration

N = M = 500
WIDTH = 32


def build(scheme, **changes):
    torch.manual_seed(0)
    config = KiloConfig(arch="encdec", num_encoder_layers=N, num_decoder_layers=M, hidden_size=WIDTH, num_heads=2,
                        vocab_size=64, max_positions=16, scheme=scheme, pad_token_id=0, **changes)
    return KiloForConditionalGeneration(config)


@pytest.fixture(scope="module")
def deepnorm_500_500():
    return build("deepnorm")


def xavier_std(rows, cols, gain):
    return gain * math.sqrt(2.0 / (rows + cols))


def pooled_std(tensors):
    return torch.cat([t.flatten() for t in tensors]).std().item()


def test_deepnorm_constants_are_deepnets_encoder_decoder_formulas(deepnorm_500_500):
    config = deepnorm_500_500.config
    joint = (N**4 * M) ** (1 / 16)
    assert config.alpha == pytest.approx(0.81 * joint) and config.beta == pytest.approx(0.87 / joint)
    assert config.decoder_constants == {"alpha": pytest.approx((3 * M) ** 0.25), "beta": pytest.approx((12 * M) ** -0.25)}
    first_encoder, first_decoder = deepnorm_500_500.model.encoder.layers[0], deepnorm_500_500.model.decoder.layers[0]
    assert first_encoder.ffn_residual.alpha == config.alpha
    assert first_decoder.cross_attention_residual.alpha == config.decoder_constants["alpha"]


def test_deepnorm_init_statistics_match_the_encoder_and_decoder_gains(deepnorm_500_500):
    """xavier_normal with gain β_enc = 0.87·(N⁴M)^{-1/16} on the encoder's V, attention-out, FFN; with
    β_dec = (12M)^{-1/4} on the decoder's (self- and cross-attention alike); gain 1 on Q and K. Within 5 %."""
    config = deepnorm_500_500.config
    encoder, decoder = deepnorm_500_500.model.encoder.layers, deepnorm_500_500.model.decoder.layers
    square, ffn = xavier_std(WIDTH, WIDTH, 1.0), xavier_std(4 * WIDTH, WIDTH, 1.0)
    for blocks, beta in ((encoder, config.beta), (decoder, config.decoder_constants["beta"])):
        assert pooled_std(b.attention.qkv.weight[2 * WIDTH:] for b in blocks) == pytest.approx(beta * square, rel=0.05)
        assert pooled_std(b.attention.out.weight for b in blocks) == pytest.approx(beta * square, rel=0.05)
        assert pooled_std(b.ffn.fc_in.weight for b in blocks) == pytest.approx(beta * ffn, rel=0.05)
        assert pooled_std(b.ffn.fc_out.weight for b in blocks) == pytest.approx(beta * ffn, rel=0.05)
        assert pooled_std(b.attention.qkv.weight[:2 * WIDTH] for b in blocks) == pytest.approx(square, rel=0.05)
    beta = config.decoder_constants["beta"]
    assert pooled_std(b.cross_attention.key_value.weight[WIDTH:] for b in decoder) == pytest.approx(beta * square, rel=0.05)
    assert pooled_std(b.cross_attention.out.weight for b in decoder) == pytest.approx(beta * square, rel=0.05)
    assert pooled_std(b.cross_attention.query.weight for b in decoder) == pytest.approx(square, rel=0.05)
    assert pooled_std(b.cross_attention.key_value.weight[:WIDTH] for b in decoder) == pytest.approx(square, rel=0.05)


# The schemes whose encoder-decoder constants come from (N, M) (DeepNorm, Upscale LN, Sub-LN), the paper's
# FoundationLayerNorm and the Pre-LN baseline. Every registered scheme stays finite at 1000 layers at init
# (tests/modeling/test_deep.py); this checks the encoder-decoder wiring at depth, a few schemes to stay fast.
@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["deepnorm", "upscale_ln", "sub_ln", "foundation_ln", "pre_ln"])
def test_500_plus_500_layers_forward_backward_finite_with_gradient_at_the_first_encoder_layer(scheme):
    model = build(scheme)
    input_ids, labels = torch.randint(1, 64, (2, 12)), torch.randint(1, 64, (2, 6))
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    first_encoder_layer = model.model.encoder.layers[0]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in first_encoder_layer.ffn.parameters())
    assert first_encoder_layer.attention.qkv.weight.grad.abs().sum() > 0
