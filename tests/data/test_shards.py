"""Token shards: the packed stream decodes back to the documents; the split is deterministic; the cache is hit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kilolayer.data import shards as shards_module
from kilolayer.data.corpus import read_documents
from kilolayer.data.shards import build_token_shards
from kilolayer.errors import KiloError


def split_documents(tokens: np.ndarray, separator_id: int) -> list[list[int]]:
    """The packed stream cut at each separator; every document is followed by one, so the tail is empty."""
    assert tokens[-1] == separator_id
    cuts = np.flatnonzero(tokens == separator_id)
    return [tokens[start + 1 if start >= 0 else 0 : end].tolist() for start, end in zip([-1, *cuts[:-1]], cuts)]


def test_packing_round_trip_and_disjoint_split(wiki_slice, gpt2, tmp_path):
    documents = read_documents(wiki_slice)
    shards = build_token_shards([wiki_slice], gpt2, tmp_path, valid_fraction=0.1, seed=0, separator_id=gpt2.eos_token_id)
    assert shards.train.dtype == np.uint16 and isinstance(shards.train, np.memmap)
    assert shards.vocab_size == 50257
    train = [gpt2.decode(ids) for ids in split_documents(shards.train, gpt2.eos_token_id)]
    valid = [gpt2.decode(ids) for ids in split_documents(shards.valid, gpt2.eos_token_id)]
    assert len(valid) == shards.valid_documents == round(0.1 * len(documents))
    assert len(train) == shards.train_documents == len(documents) - len(valid)
    # Each split keeps corpus order, and together they hold every document exactly once.
    assert train == [document for document in documents if document in set(train)]
    assert sorted(train + valid) == sorted(documents)
    assert not set(train) & set(valid)
    assert documents[0].startswith("Jarred Shaw\n\nJarred Shaw (born September 28, 1990)")


def test_split_is_deterministic_and_seeded(wiki_slice, gpt2, tmp_path):
    def build(cache, seed):
        return build_token_shards([wiki_slice], gpt2, tmp_path / cache, 0.1, seed, gpt2.eos_token_id)

    first, again, other_seed = build("a", 0), build("b", 0), build("c", 1)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.valid, again.valid)
    assert not np.array_equal(first.valid, other_seed.valid)


def test_second_call_reuses_the_cache(wiki_slice, gpt2, tmp_path, monkeypatch):
    tokenize_calls = []
    tokenize = shards_module._tokenize
    monkeypatch.setattr(shards_module, "_tokenize", lambda *args: tokenize_calls.append(args) or tokenize(*args))
    cache = tmp_path / "cache"
    first = build_token_shards([wiki_slice], gpt2, cache, 0.1, 0, gpt2.eos_token_id)
    second = build_token_shards([wiki_slice], gpt2, cache, 0.1, 0, gpt2.eos_token_id)
    assert len(tokenize_calls) == 1
    assert second.path == first.path and np.array_equal(second.train, first.train)
    assert [path.name for path in cache.iterdir()] == [first.path.name]  # no temporary folder left behind

    changed = tmp_path / "changed.txt"  # other bytes → another key → tokenized again
    changed.write_text(wiki_slice.read_text(encoding="utf-8") + "\nOne more article.\n", encoding="utf-8")
    build_token_shards([changed], gpt2, cache, 0.1, 0, gpt2.eos_token_id)
    assert len(tokenize_calls) == 2


def test_jsonl_rows_are_documents_and_bert_uses_sep(bert, tmp_path):
    corpus = tmp_path / "rows.jsonl"
    rows = [{"text": "First row."}, {"text": "  "}, {"text": "Second row, with\nnewline."}, {"text": "Third."}]
    corpus.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n", encoding="utf-8")
    shards = build_token_shards([corpus], bert, tmp_path / "cache", 0.0, 0, bert.sep_token_id)
    decoded = [bert.decode(ids) for ids in split_documents(shards.train, bert.sep_token_id)]
    assert decoded == ["first row.", "second row, with newline.", "third."]
    assert len(shards.valid) == 0 and shards.valid_documents == 0


def test_bad_split_settings(wiki_slice, gpt2, tmp_path):
    with pytest.raises(KiloError, match=r"valid_fraction must be in \[0, 1\)"):
        build_token_shards([wiki_slice], gpt2, tmp_path, 1.0, 0, gpt2.eos_token_id)
    single = tmp_path / "one.txt"
    single.write_text("Only one article here.\n", encoding="utf-8")
    with pytest.raises(KiloError, match="has 1 document"):
        build_token_shards([single], gpt2, tmp_path, 0.01, 0, gpt2.eos_token_id)
    assert not any(tmp_path.glob("shards-*")) and not any(tmp_path.glob(".shards-*"))
