"""Each scheme's forward equals its equation, computed by hand on a toy sublayer."""

import math

import pytest
import torch
import torch.nn.functional as F

from kilolayer.modeling import KiloConfig
from kilolayer.modeling.schemes import SCHEMES

N = 24  # depth used to derive α, β
HIDDEN = 8


def config_for(scheme: str) -> KiloConfig:
    return KiloConfig(num_layers=N, hidden_size=HIDDEN, num_heads=2, vocab_size=16, max_positions=8, scheme=scheme)


def toy_sublayer(x):
    """A fixed nonlinear G with a nonzero mean, so that a missing LN or scale would show."""
    weight = torch.linspace(-1, 1, HIDDEN * HIDDEN).reshape(HIDDEN, HIDDEN)
    return torch.tanh(x @ weight) + 0.3


def layer_norm(x):
    return F.layer_norm(x, (HIDDEN,), eps=1e-5)


EQUATIONS = {
    "post_ln": lambda x, G, cfg, layer: layer_norm(x + G(x)),
    "pre_ln": lambda x, G, cfg, layer: x + G(layer_norm(x)),
    "deepnorm": lambda x, G, cfg, layer: layer_norm((2 * N) ** 0.25 * x + G(x)),
    "upscale_ln": lambda x, G, cfg, layer: layer_norm((2 * N) ** 0.25 * x + G(x)),
    "foundation_ln": lambda x, G, cfg, layer: layer_norm(0.974 * x + G(x)),
    "sub_ln": lambda x, G, cfg, layer: x + G(layer_norm(x)),  # the inner LN lives inside G (tested below)
    "rezero": lambda x, G, cfg, layer: x + 0.0 * G(x),
    "lns": lambda x, G, cfg, layer: x + G(layer_norm(x) / math.sqrt(layer)),
    "sandwich": lambda x, G, cfg, layer: x + layer_norm(G(layer_norm(x))),
}


def test_every_registered_scheme_has_an_equation_here():
    assert set(EQUATIONS) == set(SCHEMES)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("layer_number", [1, 7])
def test_forward_matches_equation(scheme, layer_number):
    config = config_for(scheme)
    residual = SCHEMES[scheme](config, layer_number)
    x = torch.randn(3, 5, HIDDEN) * 2 + 1
    expected = EQUATIONS[scheme](x, toy_sublayer, config, layer_number)
    torch.testing.assert_close(residual(x, toy_sublayer), expected)


def test_rezero_gate_scales_the_branch():
    residual = SCHEMES["rezero"](config_for("rezero"), 1)
    with torch.no_grad():
        residual.gate.fill_(0.5)
    x = torch.randn(2, 3, HIDDEN)
    torch.testing.assert_close(residual(x, toy_sublayer), x + 0.5 * toy_sublayer(x))


def test_sub_ln_norms_inside_the_sublayer_before_the_output_projection():
    from kilolayer.modeling.layers import FeedForward

    config = config_for("sub_ln")
    ffn = FeedForward(config, inner_norm=True)
    x = torch.randn(2, 3, HIDDEN)
    inner = F.gelu(ffn.fc_in(x))
    expected = ffn.fc_out(F.layer_norm(inner, (config.ffn_size,), eps=1e-5))
    torch.testing.assert_close(ffn(x), expected)


@pytest.mark.parametrize(
    "scheme, alpha, beta",
    [
        ("deepnorm", (2 * N) ** 0.25, (8 * N) ** -0.25),
        ("upscale_ln", (2 * N) ** 0.25, None),
        ("foundation_ln", 0.974, None),
        ("sub_ln", None, math.sqrt(math.log(2 * N))),
        ("post_ln", None, None),
        ("pre_ln", None, None),
    ],
)
def test_constants_derived_from_depth(scheme, alpha, beta):
    config = config_for(scheme)
    assert config.alpha == pytest.approx(alpha) if alpha else config.alpha is None
    assert config.beta == pytest.approx(beta) if beta else config.beta is None


def test_final_norm_only_where_the_stream_is_not_normed_after_each_sublayer():
    post_ln_family = {"post_ln", "deepnorm", "upscale_ln", "foundation_ln", "rezero"}
    for name, cls in SCHEMES.items():
        assert cls.final_norm == (name not in post_ln_family), name
