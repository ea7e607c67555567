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
    # Mix-LN: ⌊0.25·24⌋ = 6 Post-LN layers, then Pre-LN
    "mix_ln": lambda x, G, cfg, layer: layer_norm(x + G(x)) if layer <= 6 else x + G(layer_norm(x)),
    "depth_scaled": lambda x, G, cfg, layer: x + N ** -1.0 * G(layer_norm(x)),  # CompleteP's a = 1 by default
    "t_fixup": lambda x, G, cfg, layer: x + G(x),
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
        ("t_fixup", None, 0.67 * N ** -0.25),
        ("post_ln", None, None),
        ("pre_ln", None, None),
    ],
)
def test_constants_derived_from_depth(scheme, alpha, beta):
    config = config_for(scheme)
    assert config.alpha == pytest.approx(alpha) if alpha else config.alpha is None
    assert config.beta == pytest.approx(beta) if beta else config.beta is None


def test_final_norm_only_where_the_stream_is_not_normed_after_each_sublayer():
    no_final_norm = {"post_ln", "deepnorm", "upscale_ln", "foundation_ln", "rezero", "t_fixup"}
    for name, cls in SCHEMES.items():
        assert cls.final_norm == (name not in no_final_norm), name


@pytest.mark.parametrize(
    "fraction, layers, post_ln_layers",
    [(0.25, 24, 6), (0.0, 24, 0), (1.0, 24, 24), (0.29, 100, 29), (0.5, 7, 3)],
)
def test_mix_ln_is_post_ln_in_the_first_floor_f_n_layers(fraction, layers, post_ln_layers):
    config = KiloConfig(num_layers=layers, hidden_size=HIDDEN, num_heads=2, vocab_size=16, scheme="mix_ln",
                        post_ln_fraction=fraction)
    x = torch.randn(2, 3, HIDDEN) * 2 + 1
    for layer in range(1, layers + 1):
        post_ln = layer <= post_ln_layers
        expected = layer_norm(x + toy_sublayer(x)) if post_ln else x + toy_sublayer(layer_norm(x))
        torch.testing.assert_close(SCHEMES["mix_ln"](config, layer)(x, toy_sublayer), expected)


@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0])
def test_depth_scaled_branch_multiplies_the_branch_by_n_to_the_minus_a(exponent):
    """a = 0: standard Pre-LN branch; ½: depth-μP; 1: CompleteP."""
    config = KiloConfig(num_layers=N, hidden_size=HIDDEN, num_heads=2, vocab_size=16, scheme="depth_scaled",
                        branch_exponent=exponent)
    assert config.branch_exponent == exponent
    x = torch.randn(2, 3, HIDDEN)
    expected = x + N ** -exponent * toy_sublayer(layer_norm(x))
    torch.testing.assert_close(SCHEMES["depth_scaled"](config, 3)(x, toy_sublayer), expected)


def test_t_fixup_init_is_xavier_with_beta_on_v_out_and_ffn():
    from kilolayer.modeling import KiloForCausalLM

    layers, hidden = 50, 64
    torch.manual_seed(0)
    model = KiloForCausalLM(KiloConfig(num_layers=layers, hidden_size=hidden, num_heads=2, vocab_size=128,
                                       max_positions=16, scheme="t_fixup"))
    beta = 0.67 * layers ** -0.25
    assert model.config.beta == pytest.approx(beta)

    def pooled_std(tensors):
        return torch.cat([t.flatten() for t in tensors]).std().item()

    def xavier_std(rows, cols, gain):
        return gain * math.sqrt(2.0 / (rows + cols))

    blocks = model.model.layers
    for weights, (rows, cols), gain in [
        ([b.attention.qkv.weight[:hidden] for b in blocks], (hidden, hidden), 1.0),
        ([b.attention.qkv.weight[hidden:2 * hidden] for b in blocks], (hidden, hidden), 1.0),
        ([b.attention.qkv.weight[2 * hidden:] for b in blocks], (hidden, hidden), beta),
        ([b.attention.out.weight for b in blocks], (hidden, hidden), beta),
        ([b.ffn.fc_in.weight for b in blocks], (4 * hidden, hidden), beta),
        ([b.ffn.fc_out.weight for b in blocks], (hidden, 4 * hidden), beta),
    ]:
        assert pooled_std(weights) == pytest.approx(xavier_std(rows, cols, gain), rel=0.05)
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm)) for m in model.modules())


def test_dyt_is_gamma_tanh_alpha_x_plus_beta():
    from kilolayer.modeling.schemes import DynamicTanh

    dyt = DynamicTanh(HIDDEN, alpha_init=0.7)
    with torch.no_grad():
        dyt.weight.copy_(torch.linspace(0.5, 2, HIDDEN))
        dyt.bias.copy_(torch.linspace(-1, 1, HIDDEN))
    x = torch.randn(3, HIDDEN) * 3
    torch.testing.assert_close(dyt(x), torch.linspace(0.5, 2, HIDDEN) * torch.tanh(0.7 * x) + torch.linspace(-1, 1, HIDDEN))
    assert dyt.alpha.requires_grad


def test_norm_dyt_replaces_every_norm_and_stores_its_alpha_init(tmp_path):
    from kilolayer.modeling import KiloForCausalLM
    from kilolayer.modeling.schemes import DynamicTanh

    config = KiloConfig(num_layers=2, hidden_size=HIDDEN, num_heads=2, vocab_size=16, max_positions=8,
                        scheme="pre_ln", norm="dyt", dyt_alpha=0.8)
    model = KiloForCausalLM(config)
    norms = [m for m in model.modules() if isinstance(m, DynamicTanh)]
    assert len(norms) == 2 * 2 + 1  # one per sublayer, plus the final norm
    assert all(m.alpha.item() == pytest.approx(0.8) for m in norms)
    assert not any(isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm)) for m in model.modules())
    model.save_pretrained(tmp_path)
    reloaded = KiloForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.dyt_alpha == 0.8
    assert KiloConfig(scheme="pre_ln", norm="dyt").dyt_alpha == 0.5  # derived only when not given


@pytest.mark.parametrize("scheme, name, value", [("mix_ln", "post_ln_fraction", 0.5), ("depth_scaled", "branch_exponent", 0.5)])
def test_new_constants_are_stored_and_never_re_derived(tmp_path, scheme, name, value):
    config = KiloConfig(num_layers=N, hidden_size=HIDDEN, num_heads=2, vocab_size=16, scheme=scheme, **{name: value})
    config.save_pretrained(tmp_path)
    reloaded = KiloConfig.from_pretrained(tmp_path, num_layers=2 * N)
    assert getattr(reloaded, name) == value
    assert reloaded.to_dict()[name] == value
