"""Sublayers: self-attention (fused QKV, SDPA) and the feed-forward network.

Every projection carries ``init_roles``: a tuple of (role, row slice) pairs, so that the scheme's
init rule is applied per role and a fused QKV weight is initialised slice by slice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from .schemes import build_norm


GELU_TANH_SCALE = math.sqrt(2 / math.pi)
GELU_TANH_CUBIC = 0.044715


class SigmoidTanhGelu(torch.autograd.Function):
    """GPT-2's GELU, x·½(1 + tanh(u)) with u = √(2/π)(x + 0.044715x³), computed as x·σ(2u).

    The same function (½(1 + tanh u) = σ(2u)), for CPUs whose vectorised tanh is slow: on the
    benchmark machine tanh takes 259 µs and sigmoid 27 µs on 131k floats, and the forward drops from
    148 to 72 µs. Keeps only x for backward, like the native kernel:
    dy/dx = s·(1 + (1 − s)·x·du/dx) with s = σ(2u).
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        two_u = (x * x).mul_(2 * GELU_TANH_SCALE * GELU_TANH_CUBIC).add_(2 * GELU_TANH_SCALE).mul_(x)
        return two_u.sigmoid_().mul_(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        squared = x * x
        s = torch.mul(squared, 2 * GELU_TANH_SCALE * GELU_TANH_CUBIC).add_(2 * GELU_TANH_SCALE).mul_(x).sigmoid_()
        slope = squared.mul_(6 * GELU_TANH_SCALE * GELU_TANH_CUBIC).add_(2 * GELU_TANH_SCALE).mul_(x)  # x·d(2u)/dx
        return slope.addcmul_(slope, s, value=-1).add_(1).mul_(s).mul_(grad_output)


class TanhGelu(nn.Module):
    """GPT-2's ``gelu_new``: the sigmoid form on CPU in float32/64, else the one-kernel ``F.gelu(approximate="tanh")``
    (HF's ``ACT2FN["gelu_new"]`` is 8 elementwise ops keeping 4 tensors for backward)."""

    def forward(self, x):
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
            return SigmoidTanhGelu.apply(x)
        return F.gelu(x, approximate="tanh")


TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")


def build_activation(name: str) -> nn.Module:
    """``ACT2FN[name]``, except the tanh-approximated GELU (``TanhGelu``)."""
    return TanhGelu() if name in TANH_GELU_NAMES else ACT2FN[name]


def tag_roles(linear: nn.Linear, *roles: str) -> nn.Linear:
    """Mark the equal row blocks of ``linear.weight`` with the given roles (one role = whole weight)."""
    rows = linear.out_features // len(roles)
    linear.init_roles = tuple((role, slice(i * rows, (i + 1) * rows)) for i, role in enumerate(roles))
    return linear


class RotaryEmbedding(nn.Module):
    """Rotary positions (RoFormer): cos/sin tables computed once per forward, shared by all layers."""

    def __init__(self, config):
        super().__init__()
        head_size = config.head_size
        inv_freq = 1.0 / (config.rotary_base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = position_ids.float()[..., None] * self.inv_freq  # (B, T, head/2)
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # (B, 1, T, head)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, with rotate_half(x1, x2) = (−x2, x1)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def eager_attention(q, k, v, mask, is_causal: bool, dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q·kᵀ/√d + mask)·v written out, for callers who need the attention weights (``output_attentions``).

    Same mask convention as SDPA: a boolean ``mask`` is True where a query may attend; ``is_causal``
    aligns the causal triangle to the last query (queries are the newest positions of the keys).
    Returns (output, weights), weights (B, heads, queries, keys) after dropout.
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if is_causal:
        queries, keys = scores.shape[-2:]
        allowed = torch.ones(queries, keys, dtype=torch.bool, device=q.device).tril(keys - queries)
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return weights @ v, weights


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``.

    ``cache`` (a transformers ``Cache``) receives this layer's keys and values and returns all of them
    so far. ``attention_weights``, when a list, switches to the eager path and gets this layer's
    weights appended (SDPA never materialises them).
    """

    def __init__(self, config, layer_index: int, inner_norm: bool):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        self.layer_index = layer_index
        self.dropout = config.attention_dropout
        hidden = config.hidden_size
        self.qkv = tag_roles(nn.Linear(hidden, 3 * hidden, bias=config.use_bias), "q", "k", "v")
        self.inner_norm = build_norm(config) if inner_norm else nn.Identity()
        self.out = tag_roles(nn.Linear(hidden, hidden, bias=config.use_bias), "attn_out")
        self.out_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x, mask, is_causal, rotary=None, cache=None, attention_weights: list | None = None):
        batch, length, hidden = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head)
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_index)
        dropout_p = self.dropout if self.training else 0.0
        if attention_weights is None:
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
        else:
            attended, weights = eager_attention(q, k, v, mask, is_causal, dropout_p)
            attention_weights.append(weights)
        attended = attended.transpose(1, 2).reshape(batch, length, hidden)
        return self.out_dropout(self.out(self.inner_norm(attended)))


class FeedForward(nn.Module):
    """FFN(x) = W_out · act(W_in · x)."""

    def __init__(self, config, inner_norm: bool):
        super().__init__()
        self.fc_in = tag_roles(nn.Linear(config.hidden_size, config.ffn_size, bias=config.use_bias), "ffn_in")
        self.act = build_activation(config.hidden_act)
        self.inner_norm = build_norm(config, config.ffn_size) if inner_norm else nn.Identity()
        self.fc_out = tag_roles(nn.Linear(config.ffn_size, config.hidden_size, bias=config.use_bias), "ffn_out")
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x):
        return self.dropout(self.fc_out(self.inner_norm(self.act(self.fc_in(x)))))
