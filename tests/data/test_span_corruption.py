"""T5 span corruption: inputs and targets rebuild the window, T5's densities, pure batches, sentinels in the tokenizer."""

import numpy as np
import pytest

from kilolayer.data.span_corruption import SpanCorruptionBatches, add_sentinels, corrupt, span_counts
from kilolayer.errors import KiloError

SENTINELS = [1000 + i for i in range(30)]
EOS = 999


def uncorrupt(inputs, targets):
    """The window back: each sentinel of the input replaced by the tokens after it in the target."""
    spans, current = {}, None
    for token in targets[:-1]:
        if token in SENTINELS:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    window = []
    for token in inputs[:-1]:
        window += spans[token] if token in SENTINELS else [token]
    return window


def test_input_and_target_rebuild_the_window_and_have_fixed_lengths():
    rng = np.random.default_rng(0)
    for length in (8, 32, 64, 200):
        noise, spans = span_counts(length)
        for _ in range(20):
            window = rng.integers(0, 900, length)
            inputs, targets = corrupt(window, SENTINELS, EOS, rng)
            assert len(inputs) == length - noise + spans + 1 and len(targets) == noise + spans + 1
            assert inputs[-1] == EOS and targets[-1] == EOS and targets[0] == SENTINELS[0]
            assert [t for t in inputs if t in SENTINELS] == SENTINELS[:spans] == [t for t in targets if t in SENTINELS]
            assert uncorrupt(inputs.tolist(), targets.tolist()) == window.tolist()


def test_t5_noise_density_and_mean_span_length():
    assert span_counts(512) == (77, 26)  # round(0.15 · 512), round(77 / 3)
    assert span_counts(64) == (10, 3)
    rng = np.random.default_rng(1)
    lengths = []
    for _ in range(200):
        inputs, targets = corrupt(np.arange(512), SENTINELS, EOS, rng)
        starts = [i for i, t in enumerate(targets) if t in SENTINELS] + [len(targets) - 1]
        lengths += [b - a - 1 for a, b in zip(starts, starts[1:])]
    assert min(lengths) >= 1 and np.mean(lengths) == pytest.approx(77 / 26)
    assert len(set(lengths)) > 3  # span lengths vary


def test_batches_are_a_pure_function_of_the_index_and_ranks_split_the_global_batches():
    tokens = np.arange(20_000) % 900
    single = SpanCorruptionBatches(tokens, 4, 64, seed=3, sentinel_ids=SENTINELS, eos_id=EOS)
    again = SpanCorruptionBatches(tokens, 4, 64, seed=3, sentinel_ids=SENTINELS, eos_id=EOS)
    first = single.get_batch(5)
    assert first["input_ids"].shape == (4, 58) and first["labels"].shape == (4, 14)
    assert all((first[key] == again.get_batch(5)[key]).all() for key in first)
    assert not (single.get_batch(6)["labels"] == first["labels"]).all()
    rank_one = SpanCorruptionBatches(tokens, 4, 64, seed=3, sentinel_ids=SENTINELS, eos_id=EOS, rank=1, world_size=2)
    assert all((rank_one.get_batch(2)[key] == single.get_batch(5)[key]).all() for key in first)  # global micro-batch 5


def test_too_few_sentinels_and_too_short_windows_are_errors():
    with pytest.raises(KiloError, match="needs 3 sentinels"):
        corrupt(np.arange(64), SENTINELS[:2], EOS, np.random.default_rng(0))
    with pytest.raises(KiloError, match="at least 4"):
        SpanCorruptionBatches(np.arange(100), 2, 3, seed=0, sentinel_ids=SENTINELS, eos_id=EOS)


def test_add_sentinels_appends_pad_and_sentinels_without_changing_the_vocabulary(tmp_path):
    from kilolayer.data.tokenizer import train_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"document {i} with some words and numbers {i * 7}" for i in range(200)), encoding="utf-8")
    tokenizer = train_tokenizer([corpus], "bpe", 300)
    text = "document 12 with some words"
    before, size = tokenizer(text)["input_ids"], len(tokenizer)
    ids = add_sentinels(tokenizer, 64)
    assert tokenizer.pad_token == "<pad>" and tokenizer.pad_token_id == size
    assert ids == [size + 1, size + 2, size + 3] and tokenizer.convert_ids_to_tokens(ids[0]) == "<extra_id_0>"
    assert tokenizer(text)["input_ids"] == before
    assert tokenizer("a <extra_id_1> b")["input_ids"].count(ids[1]) == 1  # a sentinel is one token, never split
    assert add_sentinels(tokenizer, 64) == ids and len(tokenizer) == size + 4  # idempotent
