"""T5's span corruption (Raffel et al. 2020, §3.1.4) over the packed token windows the engine already reads.

In a window of L tokens, n = round(ρ·L) tokens (noise density ρ = 0.15) form k = round(n / μ) spans
(mean span length μ = 3) at random places. The encoder input replaces span i by the sentinel
``<extra_id_i>``; the decoder target lists each sentinel followed by the tokens it replaced; both end
in EOS. As in T5, a window starts with kept tokens and alternates kept / noise segments:

    window   a b c d e f g h          input    a <extra_id_0> d e <extra_id_1> h EOS
    noise      b c     f g            labels   <extra_id_0> b c <extra_id_1> f g EOS

Every window of L gives an input of L − n + k + 1 and a target of n + k + 1 tokens: fixed shapes, no
padding. The span layout of a batch is a pure function of (seed, global micro-batch), as the masking
of ``MaskedLMBatches``, so a resumed run continues bitwise.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import KiloError
from .batches import PackedWindows

NOISE_DENSITY = 0.15  # T5's
MEAN_SPAN_LENGTH = 3.0  # T5's
SENTINEL = "<extra_id_{}>"  # T5's sentinel names
PAD = "<pad>"
SPAN_STREAM = 2  # the random stream of the span layout (batches.py uses 0 for the window order, 1 for MLM masking)


def span_counts(length: int, noise_density: float = NOISE_DENSITY, mean_span_length: float = MEAN_SPAN_LENGTH) -> tuple[int, int]:
    """(noise tokens n, spans k) of a window of ``length`` tokens: n = round(ρ·L) in [1, L − 1], k = max(1, round(n / μ))."""
    noise = min(max(round(length * noise_density), 1), length - 1)
    return noise, max(1, round(noise / mean_span_length))


def add_sentinels(tokenizer, seq_len: int) -> list[int]:
    """Add the ``<pad>`` token (when missing) and the sentinels a window of ``seq_len`` needs to ``tokenizer``; their ids.

    Added tokens take the ids after the vocabulary, so token shards encoded before stay valid.
    """
    spans = span_counts(seq_len)[1]
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
    names = [SENTINEL.format(i) for i in range(spans)]
    tokenizer.add_special_tokens({"additional_special_tokens": names}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(names)


def random_segments(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` positive lengths summing to ``total``, uniformly over such compositions."""
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False) + 1)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def corrupt(window: np.ndarray, sentinel_ids: list[int], eos_id: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(encoder input, decoder target) of one window, as in the module docstring."""
    noise, spans = span_counts(len(window))
    if spans > len(sentinel_ids):
        raise KiloError(f"a window of {len(window)} tokens needs {spans} sentinels, the tokenizer has {len(sentinel_ids)}")
    noise_lengths = random_segments(noise, spans, rng)
    kept_lengths = random_segments(len(window) - noise, spans, rng)
    inputs, targets, start = [], [], 0
    for sentinel, kept, dropped in zip(sentinel_ids, kept_lengths, noise_lengths):
        inputs += [window[start : start + kept], [sentinel]]
        targets += [[sentinel], window[start + kept : start + kept + dropped]]
        start += kept + dropped
    return np.concatenate([*inputs, [eos_id]]), np.concatenate([*targets, [eos_id]])


class SpanCorruptionBatches(PackedWindows):
    """Encoder-decoder batches: ``input_ids`` (B, L − n + k + 1) and ``labels`` (B, n + k + 1) from windows of
    ``seq_len`` tokens; the model builds its decoder inputs by shifting the labels right."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, *, sentinel_ids: list[int],
                 eos_id: int, rank: int = 0, world_size: int = 1):
        if seq_len < 4:
            raise KiloError(f"seq_len must be at least 4 for span corruption (kept and noise tokens), got {seq_len}")
        super().__init__(tokens, batch_size, seq_len, seed, rank, world_size)
        self.sentinel_ids = list(sentinel_ids)
        self.eos_id = eos_id

    def get_batch(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, SPAN_STREAM, self.global_micro_batch(index)])
        pairs = [corrupt(window, self.sentinel_ids, self.eos_id, rng) for window in self.windows(index)]
        input_ids = np.stack([source for source, _ in pairs])
        labels = np.stack([target for _, target in pairs])
        return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels)}
