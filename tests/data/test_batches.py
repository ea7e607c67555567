"""Batches are pure functions of (seed, index, rank, world_size); MLM masking follows BERT's 15 % and 80/10/10."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kilolayer.data.batches import CausalLMBatches, MaskedLMBatches
from kilolayer.errors import KiloError

SEQ_LEN, BATCH = 16, 4
TOKENS = np.arange(SEQ_LEN * 50 + 7, dtype=np.uint16)  # token value // SEQ_LEN names its window; 7 spare tokens
PAD, UNK, CLS, SEP, MASK = range(5)
VOCAB = 1000


def window_ids(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0] // SEQ_LEN).tolist()


def test_causal_batches_are_pure_windows_with_labels_equal_inputs():
    batches = CausalLMBatches(TOKENS, BATCH, SEQ_LEN, seed=3)
    assert len(batches) == 50 // BATCH
    batch = batches.get_batch(5)
    assert batch["input_ids"].shape == (BATCH, SEQ_LEN) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["labels"], batch["input_ids"])
    expected_rows = batch["input_ids"][:, :1] + torch.arange(SEQ_LEN)  # whole, aligned windows
    assert torch.equal(batch["input_ids"], expected_rows) and (batch["input_ids"][:, 0] % SEQ_LEN == 0).all()
    fresh = CausalLMBatches(TOKENS, BATCH, SEQ_LEN, seed=3)
    for index in [7, 0, 30, 5]:  # any order, any object: same index → same batch
        assert torch.equal(fresh.get_batch(index)["input_ids"], batches.get_batch(index)["input_ids"])
    assert not torch.equal(CausalLMBatches(TOKENS, BATCH, SEQ_LEN, seed=4).get_batch(5)["input_ids"], batch["input_ids"])


def test_each_epoch_visits_distinct_windows_in_a_new_order():
    batches = CausalLMBatches(TOKENS, BATCH, SEQ_LEN, seed=0)
    epochs = [[w for index in range(start, start + 12) for w in window_ids(batches.get_batch(index)["input_ids"])] for start in (0, 12)]
    for seen in epochs:
        assert len(set(seen)) == len(seen) == 48
    assert epochs[0] != epochs[1]


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_r_at_index_i_sees_what_one_process_sees_at_micro_batch_i_w_plus_r(world_size):
    single = CausalLMBatches(TOKENS, BATCH, SEQ_LEN, seed=1)
    ranks = [CausalLMBatches(TOKENS, BATCH, SEQ_LEN, seed=1, rank=rank, world_size=world_size) for rank in range(world_size)]
    assert len(ranks[0]) == 50 // (BATCH * world_size)
    for index in range(10):  # crosses epoch boundaries
        for rank, batches in enumerate(ranks):
            assert torch.equal(batches.get_batch(index)["input_ids"], single.get_batch(index * world_size + rank)["input_ids"])
    first_epoch = [w for index in range(len(ranks[0])) for batches in ranks for w in window_ids(batches.get_batch(index)["input_ids"])]
    assert len(set(first_epoch)) == len(first_epoch)  # ranks never share a window within an epoch


def masked_batches(tokens, seed=0, rank=0, world_size=1, seq_len=SEQ_LEN + 2):
    return MaskedLMBatches(
        tokens, BATCH, seq_len, seed, cls_id=CLS, sep_id=SEP, mask_id=MASK, pad_id=PAD, vocab_size=VOCAB,
        special_ids=[PAD, UNK, CLS, SEP, MASK], rank=rank, world_size=world_size,
    )  # fmt: skip


def test_mlm_masking_statistics_over_many_batches():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, VOCAB, size=200_000).astype(np.uint16)
    tokens[rng.random(len(tokens)) < 0.05] = SEP  # document separators inside the windows: never masked
    tokens[rng.random(len(tokens)) < 0.01] = UNK
    batches = masked_batches(tokens, seq_len=130)
    counts = dict.fromkeys(["maskable", "chosen", "to_mask", "to_random", "kept", "special_changed", "special_labelled"], 0)
    for index in range(100):
        batch = batches.get_batch(index)
        inputs, labels = batch["input_ids"], batch["labels"]
        assert inputs.shape == labels.shape == batch["attention_mask"].shape == batch["token_type_ids"].shape == (BATCH, 130)
        assert (inputs[:, 0] == CLS).all() and (inputs[:, -1] == SEP).all() and (labels[:, [0, -1]] == -100).all()
        assert (batch["attention_mask"] == 1).all() and (batch["token_type_ids"] == 0).all()
        original = torch.from_numpy(batches.windows(index))
        body_inputs, body_labels = inputs[:, 1:-1], labels[:, 1:-1]
        special = (original == SEP) | (original == UNK)
        chosen = body_labels != -100
        assert torch.equal(body_labels[chosen], original[chosen])
        counts["maskable"] += int((~special).sum())
        counts["chosen"] += int(chosen.sum())
        counts["to_mask"] += int((chosen & (body_inputs == MASK)).sum())
        counts["kept"] += int((chosen & (body_inputs == original)).sum())
        counts["to_random"] += int((chosen & (body_inputs != MASK) & (body_inputs != original)).sum())
        counts["special_changed"] += int((special & (body_inputs != original)).sum())
        counts["special_labelled"] += int((special & chosen).sum())
        assert not ((body_inputs < 5) & (body_inputs != MASK) & ~special).any()  # random tokens are never specials
    # ~49k maskable positions: the standard error of the 15 % is 0.16 points, of each share at most 0.5 points.
    assert counts["chosen"] / counts["maskable"] == pytest.approx(0.15, abs=0.01)
    assert counts["to_mask"] / counts["chosen"] == pytest.approx(0.8, abs=0.02)
    assert counts["to_random"] / counts["chosen"] == pytest.approx(0.1, abs=0.02)
    assert counts["kept"] / counts["chosen"] == pytest.approx(0.1, abs=0.02)
    assert counts["special_changed"] == counts["special_labelled"] == 0


def test_mlm_batches_are_pure_and_rank_equivalent():
    tokens = np.random.default_rng(1).integers(5, VOCAB, size=5_000).astype(np.uint16)
    single = masked_batches(tokens, seed=2)
    again = masked_batches(tokens, seed=2)
    for index in [3, 0, 3]:
        for key, value in single.get_batch(index).items():
            assert torch.equal(value, again.get_batch(index)[key])
    rank1 = masked_batches(tokens, seed=2, rank=1, world_size=2)
    for index in range(4):
        for key, value in rank1.get_batch(index).items():
            assert torch.equal(value, single.get_batch(2 * index + 1)[key])
    other_index = single.get_batch(4)["labels"] != -100
    assert not torch.equal(single.get_batch(3)["labels"] != -100, other_index)  # masks differ between batches


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CausalLMBatches(TOKENS[: SEQ_LEN * 3], BATCH, SEQ_LEN, 0), "make 3 windows of 16, fewer than one batch of 4 × 1 rank"),
        (lambda: CausalLMBatches(TOKENS, BATCH, SEQ_LEN, 0, rank=2, world_size=2), r"rank \(2\) in \[0, world_size\)"),
        (lambda: CausalLMBatches(TOKENS, BATCH, 1, 0), "seq_len must be at least 2"),
        (lambda: masked_batches(TOKENS, seq_len=2), "seq_len must be at least 3"),
    ],
)
def test_bad_batch_settings(make, message):
    with pytest.raises(KiloError, match=message):
        make()
