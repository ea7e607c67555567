"""Depth-stabilization schemes: how a sublayer G joins the residual stream, and how G is initialised.

Each scheme is one small ``nn.Module`` class. An instance wraps one sublayer (attention or FFN):
``forward(x, sublayer)`` returns the new residual stream. The class also carries the scheme's
constants (derived from the depth N when the config does not give them) and its init rule,
applied per projection *role* (q, k, v, attn_out, ffn_in, ffn_out), never by parameter name.

Adding a scheme = adding one class here and listing it in ``SCHEMES``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

ROLES = ("q", "k", "v", "attn_out", "ffn_in", "ffn_out")
RESIDUAL_OUT_ROLES = frozenset({"attn_out", "ffn_out"})
QUERY_KEY_ROLES = frozenset({"q", "k"})


DYT_ALPHA_INIT = 0.5  # DyT's default α₀ (arXiv 2503.10622)


def build_norm(config, size: int | None = None) -> nn.Module:
    """LayerNorm, RMSNorm or DyT (as ``config.norm`` says) over ``size`` features, the hidden size by default."""
    size = size or config.hidden_size
    if config.norm == "rmsnorm":
        return nn.RMSNorm(size, eps=config.norm_eps)
    if config.norm == "dyt":
        return DynamicTanh(size, config.dyt_alpha, bias=config.use_bias)
    return nn.LayerNorm(size, eps=config.norm_eps, bias=config.use_bias)


class DynamicTanh(nn.Module):
    """DyT (Transformers without Normalization, Zhu et al. 2025, arXiv 2503.10622): γ·tanh(α·x) + β.

    Replaces every norm when ``norm: dyt``. α is one learnable scalar per DyT, initialised to
    ``config.dyt_alpha`` (stored; 0.5 by default, the paper's α₀); γ = 1 and β = 0 at init, as LayerNorm's.
    """

    def __init__(self, size: int, alpha_init: float, bias: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))  # one element, not 0-dim: FSDP2 shards dim 0
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None

    def forward(self, x):
        y = torch.tanh(self.alpha * x) * self.weight
        return y + self.bias if self.bias is not None else y


class Scheme(nn.Module):
    """Base class. Subclasses set ``name`` and ``final_norm`` and implement ``forward``."""

    name: str = ""
    final_norm: bool = False  # does the stack need a norm after the last layer?
    inner_norm: bool = False  # does each sublayer norm its inner activation (Sub-LN)?

    def __init__(self, config, layer_number: int):
        super().__init__()

    @staticmethod
    def default_constants(num_layers: int) -> dict[str, float]:
        """The constants (α, β) this scheme uses, as functions of the depth N."""
        return {}

    @classmethod
    def default_encdec_constants(cls, num_encoder_layers: int, num_decoder_layers: int) -> tuple[dict, dict]:
        """(encoder, decoder) constants of an encoder-decoder with N encoder and M decoder layers.

        By default each stack takes the constants of its own depth; schemes whose papers derive
        encoder-decoder constants from (N, M) jointly override this.
        """
        return cls.default_constants(num_encoder_layers), cls.default_constants(num_decoder_layers)

    @classmethod
    def init_projection(cls, weight: torch.Tensor, role: str, config) -> None:
        """Default rule: N(0, σ²) with σ = ``config.initializer_range``."""
        init.normal_(weight, mean=0.0, std=config.initializer_range)

    def forward(self, x: torch.Tensor, sublayer) -> torch.Tensor:
        raise NotImplementedError


class PostLN(Scheme):
    """Post-LN (Vaswani 2017, BERT): x ← LN(x + G(x)). Normal init."""

    name = "post_ln"

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        self.norm = build_norm(config)

    def forward(self, x, sublayer):
        return self.norm(x + sublayer(x))


class ScaledPostLN(Scheme):
    """x ← LN(α·x + G(x)): Post-LN with the residual branch up-weighted by α."""

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        self.norm = build_norm(config)
        self.alpha = float(config.alpha)

    def forward(self, x, sublayer):
        return self.norm(self.alpha * x + sublayer(x))


class DeepNorm(ScaledPostLN):
    """DeepNorm (DeepNet, arXiv 2203.00555): x ← LN(α·x + G(x)), α = (2N)^{1/4}.

    Init: xavier_normal with gain β = (8N)^{-1/4} on V, attention-out, FFN in and out; gain 1 on
    Q and K (the paper's rule; torchscale instead divides its default init by (8N)^{1/4}).
    """

    name = "deepnorm"

    @staticmethod
    def default_constants(num_layers):
        return {"alpha": (2 * num_layers) ** 0.25, "beta": (8 * num_layers) ** -0.25}

    @classmethod
    def default_encdec_constants(cls, num_encoder_layers, num_decoder_layers):
        """DeepNet's encoder-decoder constants (the paper's Figure 2; a decoder layer has three sublayers):
        encoder α = 0.81·(N⁴M)^{1/16}, β = 0.87·(N⁴M)^{-1/16}; decoder α = (3M)^{1/4}, β = (12M)^{-1/4}.
        torchscale uses the same α and β, but multiplies its default init by β instead of xavier_normal with gain β.
        """
        n, m = num_encoder_layers, num_decoder_layers
        joint = (n**4 * m) ** (1 / 16)
        return (
            {"alpha": 0.81 * joint, "beta": 0.87 / joint},
            {"alpha": (3 * m) ** 0.25, "beta": (12 * m) ** -0.25},
        )

    @classmethod
    def init_projection(cls, weight, role, config):
        init.xavier_normal_(weight, gain=1.0 if role in QUERY_KEY_ROLES else config.beta)


class UpscaleLN(ScaledPostLN):
    """Upscale LayerNorm (Shen 2022, for BERT): x ← LN(α·x + G(x)), α = (2N)^{1/4}. Normal init, no β."""

    name = "upscale_ln"

    @staticmethod
    def default_constants(num_layers):
        return {"alpha": (2 * num_layers) ** 0.25}

    @classmethod
    def default_encdec_constants(cls, num_encoder_layers, num_decoder_layers):
        """DeepNet's encoder-decoder α without its β (Upscale LN's encoder-only α is DeepNet's encoder-only α):
        encoder α = 0.81·(N⁴M)^{1/16}, decoder α = (3M)^{1/4}."""
        encoder, decoder = DeepNorm.default_encdec_constants(num_encoder_layers, num_decoder_layers)
        return {"alpha": encoder["alpha"]}, {"alpha": decoder["alpha"]}


class FoundationLN(ScaledPostLN):
    """FoundationLayerNorm (Shen 2022, for GPT): x ← LN(α·x + G(x)), α = 0.974 by default. Normal init.

    This is the paper's equation. The author's public code computes α·x + LN(x) instead. α does not
    depend on the depth, so an encoder-decoder's two stacks both take 0.974 unless configured.
    """

    name = "foundation_ln"

    @staticmethod
    def default_constants(num_layers):
        return {"alpha": 0.974}


class PreLN(Scheme):
    """Pre-LN (GPT-2, Xiong 2020): x ← x + G(LN(x)), final LN.

    Init: normal, with the residual-out projections (attention-out, FFN-out) scaled by 1/√(2N) as in GPT-2.
    """

    name = "pre_ln"
    final_norm = True

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        self.norm = build_norm(config)

    def forward(self, x, sublayer):
        return x + sublayer(self.norm(x))

    @classmethod
    def init_projection(cls, weight, role, config):
        std = config.initializer_range
        if role in RESIDUAL_OUT_ROLES:
            std /= math.sqrt(2 * config.num_layers)
        init.normal_(weight, mean=0.0, std=std)


class SubLN(Scheme):
    """Sub-LN (Magneto, arXiv 2210.06423): x ← x + W_out·LN(inner(LN(x))), final LN.

    The second LN sits inside the sublayer, before its output projection. Init: xavier_normal with
    gain γ = √(log 2N) on V, attention-out, FFN in and out; gain 1 on Q and K. γ is stored as ``beta``.
    """

    name = "sub_ln"
    final_norm = True
    inner_norm = True

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        self.norm = build_norm(config)

    @staticmethod
    def default_constants(num_layers):
        return {"beta": math.sqrt(math.log(2 * num_layers))}

    @classmethod
    def default_encdec_constants(cls, num_encoder_layers, num_decoder_layers):
        """Magneto's encoder-decoder gains: encoder γ = √(log(3M)·log(2N)/3), decoder γ = √(log 3M)."""
        n, m = num_encoder_layers, num_decoder_layers
        return {"beta": math.sqrt(math.log(3 * m) * math.log(2 * n) / 3)}, {"beta": math.sqrt(math.log(3 * m))}

    def forward(self, x, sublayer):
        return x + sublayer(self.norm(x))

    @classmethod
    def init_projection(cls, weight, role, config):
        init.xavier_normal_(weight, gain=1.0 if role in QUERY_KEY_ROLES else config.beta)


class ReZero(Scheme):
    """ReZero (arXiv 2003.04887): x ← x + a·G(x), a learnable scalar a = 0 at init, no LN anywhere."""

    name = "rezero"

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        # One element, not a 0-dim scalar: FSDP2 shards every parameter along dim 0.
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, sublayer):
        return x + self.gate * sublayer(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the gate had one element hold a 0-dim one: same value, reshaped."""
        key = prefix + "gate"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LayerNormScaling(Scheme):
    """LayerNorm Scaling (arXiv 2502.05795): x ← x + G(LN(x)/√ℓ), ℓ the 1-based layer index; final LN."""

    name = "lns"
    final_norm = True

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        self.norm = build_norm(config)
        self.scale = 1.0 / math.sqrt(layer_number)

    def forward(self, x, sublayer):
        return x + sublayer(self.norm(x) * self.scale)


class Sandwich(Scheme):
    """Sandwich-LN (CogView, arXiv 2105.13290): x ← x + LN(G(LN(x))), final LN.

    Peri-LN (Kim et al. 2025, arXiv 2502.02732) is the same sublayer equation under another name.
    """

    name = "sandwich"
    final_norm = True

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        self.norm = build_norm(config)
        self.output_norm = build_norm(config)

    def forward(self, x, sublayer):
        return x + self.output_norm(sublayer(self.norm(x)))


class MixLN(Scheme):
    """Mix-LN (Li et al. 2024, arXiv 2412.13795): Post-LN x ← LN(x + G(x)) in the first ⌊f·N⌋ layers,
    Pre-LN x ← x + G(LN(x)) in the others; final LN. Normal init.

    f = ``config.post_ln_fraction``, 0.25 by default (the paper's best ratio).
    """

    name = "mix_ln"
    final_norm = True

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        self.norm = build_norm(config)
        post_ln_layers = math.floor(config.post_ln_fraction * config.num_layers + 1e-9)  # ⌊f·N⌋; 0.29·100 is 28.999…
        self.post_ln = layer_number <= post_ln_layers

    @staticmethod
    def default_constants(num_layers):
        return {"post_ln_fraction": 0.25}

    def forward(self, x, sublayer):
        if self.post_ln:
            return self.norm(x + sublayer(x))
        return x + sublayer(self.norm(x))


class DepthScaledBranch(Scheme):
    """Depth-scaled branch: x ← x + N^{-a}·G(LN(x)), final LN. Normal init.

    a = ``config.branch_exponent``: 0 is the plain Pre-LN branch, ½ depth-μP (Yang et al. 2023,
    arXiv 2310.02244; Bordelon et al. 2023, arXiv 2309.16620), 1 CompleteP (Dey et al. 2025,
    arXiv 2505.01618), the default. The papers write (N/N_base)^{-a}; here N_base = 1. Only this
    forward multiplier is applied: the parametrisations' per-depth Adam learning rate (η·N^{a−1} on
    hidden weights, so unchanged at a = 1) and ε stay the run's settings. The residual-out
    projections keep the plain normal init (no GPT-2 1/√(2N)): the multiplier does that job.
    """

    name = "depth_scaled"
    final_norm = True

    def __init__(self, config, layer_number: int):
        super().__init__(config, layer_number)
        self.norm = build_norm(config)
        self.multiplier = config.num_layers ** -config.branch_exponent

    @staticmethod
    def default_constants(num_layers):
        return {"branch_exponent": 1.0}

    def forward(self, x, sublayer):
        return x + self.multiplier * sublayer(self.norm(x))


class TFixup(Scheme):
    """T-Fixup (Huang et al. 2020, "Improving Transformer Optimization Through Better Initialization",
    ICML): x ← x + G(x), no norm anywhere (nor warmup, in the paper); the init alone bounds the updates.

    Init: Xavier on every projection, with V, attention-out, FFN in and out scaled by
    β = 0.67·N^{-1/4} (stored as ``beta``), the paper's encoder rule: a GPT or BERT stack has two
    sublayers per layer, as T-Fixup's encoder; its decoder rule (9N)^{-1/4} counts three (with
    cross-attention). Q and K keep gain 1. The embeddings keep kilolayer's N(0, σ²); T-Fixup's
    N(0, d^{-1/2}) embeddings scaled by (9N)^{-1/4} tie them to an encoder-decoder's decoder depth.
    Chosen over Admin (Liu et al. 2020), whose residual weights ω come from a profiling pass on data
    rather than from N, so they are not a constant a config can derive.
    """

    name = "t_fixup"

    @staticmethod
    def default_constants(num_layers):
        return {"beta": 0.67 * num_layers ** -0.25}

    @classmethod
    def init_projection(cls, weight, role, config):
        init.xavier_uniform_(weight, gain=1.0 if role in QUERY_KEY_ROLES else config.beta)

    def forward(self, x, sublayer):
        return x + sublayer(x)


SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls
    for cls in (
        PostLN, PreLN, DeepNorm, UpscaleLN, FoundationLN, SubLN, ReZero, LayerNormScaling, Sandwich,
        MixLN, DepthScaledBranch, TFixup,
    )
}


def scheme_class(name: str) -> type[Scheme]:
    """The scheme registered under ``name``; ValueError listing the known ones otherwise."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown scheme {name!r}; known schemes: {', '.join(SCHEMES)}") from None
