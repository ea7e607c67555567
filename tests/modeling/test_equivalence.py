"""Equivalences that follow from LayerNorm's scale invariance, LN(c·z) = LN(z) up to LN's eps.

LN(α·x + G(x)) = LN(α·(x + G(x)/α)) = LN(x + G(x)/α): a ``foundation_ln`` (or ``upscale_ln``) model
is a ``post_ln`` model whose sublayer outputs are divided by α, i.e. whose output projections
(attention-out and FFN-out, weights and biases) are divided by α. With α = 0.974 the
FoundationLayerNorm sublayers are 2.7 % larger than Post-LN's, nothing else: there is no α^{2N}
damping of the residual stream.
"""

import pytest
import torch

from kilolayer.modeling import KiloConfig, KiloForCausalLM

SHAPE = dict(num_layers=24, hidden_size=32, num_heads=2, vocab_size=64, max_positions=16)


def logits_of_both(scheme: str, alpha: float, norm_eps: float, divide: bool = True):
    """Logits of a ``scheme`` model with α and of the ``post_ln`` model holding its weights,
    output projections divided by α (or not, with ``divide=False``), in float64."""
    torch.manual_seed(0)
    scaled = KiloForCausalLM(KiloConfig(**SHAPE, scheme=scheme, alpha=alpha, norm_eps=norm_eps)).double().eval()
    with torch.no_grad():  # biases and LN gains away from their init values, as after training
        for name, parameter in scaled.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
            elif "norm" in name:
                parameter.uniform_(0.5, 1.5)
    post_ln = KiloForCausalLM(KiloConfig(**SHAPE, scheme="post_ln", norm_eps=norm_eps)).double().eval()
    post_ln.load_state_dict(scaled.state_dict())
    if divide:
        with torch.no_grad():
            for block in post_ln.model.layers:
                for projection in (block.attention.out, block.ffn.fc_out):
                    projection.weight.div_(alpha)
                    projection.bias.div_(alpha)
    tokens = torch.randint(0, SHAPE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return scaled(tokens).logits, post_ln(tokens).logits


@pytest.mark.parametrize("scheme, alpha", [("foundation_ln", 0.974), ("foundation_ln", 0.5), ("upscale_ln", 3.0)])
def test_scaled_post_ln_equals_post_ln_with_output_projections_divided_by_alpha(scheme, alpha):
    """Exact up to eps: with a negligible eps the two models agree to rounding."""
    scaled, post_ln = logits_of_both(scheme, alpha, norm_eps=1e-14)
    torch.testing.assert_close(scaled, post_ln, rtol=1e-9, atol=1e-9)


def test_foundation_ln_equals_post_ln_at_the_default_eps():
    """With eps = 1e-5 the models differ only by eps's share of the variance: 8e-7 here."""
    scaled, post_ln = logits_of_both("foundation_ln", 0.974, norm_eps=1e-5)
    torch.testing.assert_close(scaled, post_ln, rtol=0, atol=1e-5)


def test_without_the_division_the_models_differ():
    """The control: without the 1/α the logits differ by 7e-3 (9e-16 with it), so the test above can fail."""
    scaled, post_ln = logits_of_both("foundation_ln", 0.974, norm_eps=1e-14, divide=False)
    assert (scaled - post_ln).abs().max() > 1e-4
