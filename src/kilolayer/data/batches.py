"""Batches from a token stream, each a pure function of (seed, index, rank, world_size).

Purity is what makes resume bitwise exact: a checkpoint stores only the batch index. The stream is
cut into non-overlapping windows, visited in a seeded permutation that changes every epoch. Batches
are numbered globally: rank ``r`` of ``W`` at index ``i`` gets global micro-batch ``i·W + r``, exactly
what one process gets at index ``i·W + r`` — so DDP with batch B per rank sees the same data as one
process accumulating W micro-batches of B, and ranks never share a window within an epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import KiloError

# Separate random streams for the window order and for MLM masking, so neither shifts the other.
ORDER_STREAM, MASK_STREAM = 0, 1
IGNORE_INDEX = -100  # label of positions without a loss (PyTorch cross-entropy's default ignore_index)


class PackedWindows:
    """Non-overlapping ``window_len``-token windows of ``tokens``, ``batch_size`` per micro-batch, reshuffled each epoch."""

    def __init__(self, tokens: np.ndarray, batch_size: int, window_len: int, seed: int, rank: int, world_size: int):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise KiloError(f"batch_size ({batch_size}) and world_size ({world_size}) must be ≥ 1 and rank ({rank}) in [0, world_size)")
        self.tokens = tokens
        self.batch_size = batch_size
        self.window_len = window_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.window_count = len(tokens) // window_len
        self.micro_batches_per_epoch = self.window_count // batch_size
        if self.micro_batches_per_epoch < world_size:
            raise KiloError(
                f"{len(tokens):,} tokens make {self.window_count} windows of {window_len}, fewer than one batch of "
                f"{batch_size} × {world_size} rank(s); use more data (or a larger valid_fraction for validation) or a smaller batch_size / seq_len"
            )
        self._order_cache: tuple[int, np.ndarray] | None = None  # (epoch, permutation): the last one, recomputed on demand

    def __len__(self) -> int:
        """Batch indices per epoch (each index is one micro-batch on every rank)."""
        return self.window_count // (self.batch_size * self.world_size)

    def global_micro_batch(self, index: int) -> int:
        return index * self.world_size + self.rank

    def windows(self, index: int) -> np.ndarray:
        """The (batch_size, window_len) int64 tokens of batch ``index`` on this rank."""
        epoch, position = divmod(self.global_micro_batch(index), self.micro_batches_per_epoch)
        chosen = self._order(epoch)[position * self.batch_size : (position + 1) * self.batch_size]
        offsets = chosen[:, None] * self.window_len + np.arange(self.window_len)
        return self.tokens[offsets].astype(np.int64)

    def _order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            permutation = np.random.default_rng([self.seed, ORDER_STREAM, epoch]).permutation(self.window_count)
            self._order_cache = (epoch, permutation)
        return self._order_cache[1]


class CausalLMBatches(PackedWindows):
    """GPT batches: ``seq_len`` tokens; labels equal the inputs (the model shifts them, as HF causal LMs do)."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1):
        if seq_len < 2:
            raise KiloError(f"seq_len must be at least 2 for next-token prediction, got {seq_len}")
        super().__init__(tokens, batch_size, seq_len, seed, rank, world_size)

    def get_batch(self, index: int) -> dict[str, torch.Tensor]:
        input_ids = torch.from_numpy(self.windows(index))
        return {"input_ids": input_ids, "labels": input_ids.clone()}


class MaskedLMBatches(PackedWindows):
    """BERT batches: ``[CLS] + (seq_len − 2) packed tokens + [SEP]``, masked as in BERT.

    ``mlm_probability`` of the non-special positions are chosen (independently per position); of those
    80 % become [MASK], 10 % a random non-special token, 10 % stay. Labels hold the original token at
    chosen positions and -100 elsewhere. The masking generator is seeded by (seed, global micro-batch).
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int,
        *,
        cls_id: int,
        sep_id: int,
        mask_id: int,
        pad_id: int,
        vocab_size: int,
        special_ids: list[int],
        mlm_probability: float = 0.15,
        rank: int = 0,
        world_size: int = 1,
    ):
        if seq_len < 3:
            raise KiloError(f"seq_len must be at least 3 for masked LM ([CLS] + tokens + [SEP]), got {seq_len}")
        if not 0 < mlm_probability < 1:
            raise KiloError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        super().__init__(tokens, batch_size, seq_len - 2, seed, rank, world_size)
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = cls_id, sep_id, mask_id, pad_id
        self.special_ids = np.array(sorted({*special_ids, cls_id, sep_id, mask_id, pad_id}), dtype=np.int64)
        self.random_ids = np.setdiff1d(np.arange(vocab_size), self.special_ids)
        self.mlm_probability = mlm_probability

    def get_batch(self, index: int) -> dict[str, torch.Tensor]:
        original = self.windows(index)
        rng = np.random.default_rng([self.seed, MASK_STREAM, self.global_micro_batch(index)])
        chosen = (rng.random(original.shape) < self.mlm_probability) & ~np.isin(original, self.special_ids)
        action = rng.random(original.shape)
        to_mask = chosen & (action < 0.8)
        to_random = chosen & (action >= 0.8) & (action < 0.9)
        inputs = original.copy()
        inputs[to_mask] = self.mask_id
        inputs[to_random] = rng.choice(self.random_ids, size=int(to_random.sum()))
        labels = np.where(chosen, original, IGNORE_INDEX)
        rows = len(original)
        input_ids = np.hstack([np.full((rows, 1), self.cls_id), inputs, np.full((rows, 1), self.sep_id)])
        labels = np.hstack([np.full((rows, 1), IGNORE_INDEX), labels, np.full((rows, 1), IGNORE_INDEX)])
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy((input_ids != self.pad_id).astype(np.int64)),
            "token_type_ids": torch.zeros_like(torch.from_numpy(input_ids)),
        }
