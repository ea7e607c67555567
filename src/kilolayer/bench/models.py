"""The benchmarked pairs: a kilolayer model and the HF transformers model of identical shape.

``gpt``: kilolayer ``pre_ln`` GPT (learned positions, tied embeddings, gelu_new) vs ``GPT2LMHeadModel``.
``bert``: kilolayer ``post_ln`` BERT (learned positions, token types, embedding LN) vs ``BertForMaskedLM``.
Dropout is 0 on both sides (it costs time and is not part of the architecture being compared).
"""

from __future__ import annotations

import argparse
import dataclasses
import re

import torch

from ..errors import KiloError
from . import BATCH, LENGTH

FAMILIES = ("gpt", "bert")
IMPLEMENTATIONS = ("kilolayer", "hf")
VOCAB = {"gpt": 50257, "bert": 30522}  # GPT-2 BPE, BERT uncased WordPiece
MAX_POSITIONS = {"gpt": 1024, "bert": 512}
NORM_EPS = {"gpt": 1e-5, "bert": 1e-12}  # GPT-2's and BERT's LayerNorm epsilons
ACTIVATION = {"gpt": "gelu_new", "bert": "gelu"}
MLM_PROBABILITY = 0.15
SCORED_TOKENS = 16  # eval: a GPT request scores its last 16 tokens (the continuation)
DEFAULT_HEADS = {64: 2, 256: 1, 768: 12}  # the shapes: 1000x64 (2 heads), 1000x256 (1), 12x768 (12)
CHECKPOINTING_FROM = 256_000  # layers x hidden: GPT-1k-sized stacks train with activation checkpointing


@dataclasses.dataclass(frozen=True)
class Size:
    """A model shape: ``layers`` x ``hidden`` with ``heads`` heads (FFN 4 x hidden)."""

    layers: int
    hidden: int
    heads: int

    @classmethod
    def parse(cls, text: str) -> "Size":
        """``LxH`` (heads from the issue's shapes, else 1 per 64 features) or ``LxHxHEADS``."""
        match = re.fullmatch(r"(\d+)x(\d+)(?:x(\d+))?", text.strip())
        if not match:
            raise KiloError(f"size {text!r}: expected LAYERSxHIDDEN or LAYERSxHIDDENxHEADS, e.g. 1000x64 or 2x32x2")
        layers, hidden = int(match[1]), int(match[2])
        heads = int(match[3]) if match[3] else DEFAULT_HEADS.get(hidden, max(1, hidden // 64))
        if min(layers, hidden, heads) < 1 or hidden % heads:
            raise KiloError(f"size {text!r}: layers, hidden and heads must be positive and heads must divide hidden")
        return cls(layers, hidden, heads)

    @property
    def label(self) -> str:
        return f"{self.layers}x{self.hidden}"

    @property
    def default_checkpointing(self) -> bool:
        return self.layers * self.hidden >= CHECKPOINTING_FROM


def build_model(implementation: str, family: str, size: Size) -> torch.nn.Module:
    """The model to benchmark, freshly initialised (construction + init is what the build time measures)."""
    hidden, ffn = size.hidden, 4 * size.hidden
    if implementation == "kilolayer":
        from ..modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM

        config = KiloConfig(
            arch=family,
            num_layers=size.layers,
            hidden_size=hidden,
            num_heads=size.heads,
            ffn_size=ffn,
            vocab_size=VOCAB[family],
            max_positions=MAX_POSITIONS[family],
            position_embedding="learned",
            tie_word_embeddings=True,
            hidden_act=ACTIVATION[family],
            norm_eps=NORM_EPS[family],
            scheme="pre_ln" if family == "gpt" else "post_ln",
            fused_loss=True,  # as kilolayer's trainer runs it
        )
        return (KiloForCausalLM if family == "gpt" else KiloForMaskedLM)(config)
    if family == "gpt":
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_layer=size.layers, n_embd=hidden, n_head=size.heads, n_inner=ffn, vocab_size=VOCAB[family],
            n_positions=MAX_POSITIONS[family], activation_function=ACTIVATION[family],
            layer_norm_epsilon=NORM_EPS[family], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            attn_implementation="sdpa",
        )
        return GPT2LMHeadModel(config)
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        num_hidden_layers=size.layers, hidden_size=hidden, num_attention_heads=size.heads, intermediate_size=ffn,
        vocab_size=VOCAB[family], max_position_embeddings=MAX_POSITIONS[family], hidden_act=ACTIVATION[family],
        layer_norm_eps=NORM_EPS[family], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )
    return BertForMaskedLM(config)


def parameter_count(family: str, size: Size) -> int:
    """Parameters of the pair's models (equal on both sides), counted on the meta device: no memory, no init."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model("kilolayer", family, size).parameters())


def make_batch(family: str, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens and labels: GPT labels = the inputs (the model shifts); BERT masks 15 % of positions."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB[family], (batch, length), generator=generator)
    if family == "gpt":
        return {"input_ids": input_ids, "labels": input_ids.clone()}
    masked = torch.rand(batch, length, generator=generator) < MLM_PROBABILITY
    masked[:, 0] = True  # every row scores at least one token
    labels = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
    return {"input_ids": input_ids, "labels": labels}


def score_requests(family: str, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-request log-likelihood, as a loglikelihood eval computes it: GPT sums log p of the last
    ``SCORED_TOKENS`` tokens given their prefix; BERT sums log p of the masked tokens."""
    log_probs = logits.float().log_softmax(-1)
    if family == "gpt":
        targets = batch["input_ids"][:, -SCORED_TOKENS:]
        picked = log_probs[:, -SCORED_TOKENS - 1 : -1].gather(-1, targets[..., None])[..., 0]
        return picked.sum(-1)
    labels = batch["labels"]
    picked = log_probs.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    return (picked * (labels >= 0)).sum(-1)


def training_flops(family: str, size: Size, batch: int, length: int) -> float:
    """Model FLOPs of one training step (forward + backward = 3 x forward; recomputation not counted).

    Forward matmuls per token: per layer 2·(4H² + 2·H·F) (QKV, attention-out, FFN in/out) plus attention
    2·2·T·H (scores and weighted sum, full T x T as PaLM counts it). The vocabulary projection 2·H·V
    (BERT's MLM head adds its H x H dense layer) counts for the tokens the loss scores: all of them for
    GPT, the masked ones for BERT (the work the task needs, whether or not a model projects the rest).
    """
    hidden, ffn, vocab = size.hidden, 4 * size.hidden, VOCAB[family]
    per_layer = 2 * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * length * hidden
    head = 2 * hidden * vocab + (2 * hidden * hidden if family == "bert" else 0)
    scored = int((make_batch(family, batch, length)["labels"] != -100).sum())
    return 3.0 * (batch * length * size.layers * per_layer + scored * head)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--family, --size and --threads of the single-model tools (``ablation``, ``breakdown``)."""
    parser.add_argument("--family", choices=FAMILIES, default="gpt")
    parser.add_argument("--size", type=_size_argument, default=Size(1000, 64, 2), help="LAYERSxHIDDEN[xHEADS] (default 1000x64)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default torch's)")


def training_setup(args: argparse.Namespace):
    """The kilolayer model of ``args`` in train mode (seed 0, denormals flushed), its fused AdamW and the bench batch."""
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    model = build_model("kilolayer", args.family, args.size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return model, optimizer, make_batch(args.family, BATCH, LENGTH)


def _size_argument(text: str) -> Size:
    try:
        return Size.parse(text)
    except KiloError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def training_step(model, optimizer, batch: dict) -> None:
    """Zero grads, forward, backward, AdamW (``use_cache=False``: in eval mode a GPT would fill a KV cache)."""
    optimizer.zero_grad(set_to_none=True)
    model(**batch, use_cache=False).loss.backward()
    optimizer.step()
