"""prepare_data: a training config in, the tokenizer, shards and batch samplers the trainer needs out."""

from __future__ import annotations

import pytest

from kilolayer.data import CausalLMBatches, MaskedLMBatches, prepare_data
from kilolayer.errors import KiloError
from kilolayer.train.config import TrainConfig


def test_gpt_with_a_trained_tokenizer(wiki_slice, tmp_path):
    config = TrainConfig(data=str(wiki_slice), tokenizer="train", tokenizer_vocab_size=600, valid_fraction=0.1)
    data = prepare_data(config, "gpt", tmp_path)
    assert len(data.tokenizer) == data.shards.vocab_size == 600
    assert data.corpus_files == [wiki_slice]
    assert data.description.startswith(f"corpus: {wiki_slice} (1 file, 0.1 MB); ")
    assert "byte-level BPE trained on the corpus (600 tokens)" in data.description
    train = data.batches("train", batch_size=2, seq_len=32, seed=0)
    valid = data.batches("valid", batch_size=2, seq_len=32, seed=0)
    assert isinstance(train, CausalLMBatches) and isinstance(valid, CausalLMBatches)
    batch = train.get_batch(0)["input_ids"]
    assert batch.shape == (2, 32) and int(batch.max()) < 600
    assert sorted(path.parent.name for path in tmp_path.glob("*/*")) == ["shards", "tokenizers"]


def test_bert_with_the_reference_vocabulary(wiki_slice, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("KILOLAYER_DATA", str(shared_data))
    config = TrainConfig(data=str(wiki_slice), tokenizer="bert-base-uncased", valid_fraction=0.1, mlm_probability=0.3)
    data = prepare_data(config, "bert", tmp_path)
    assert "tokenizer: bert-base-uncased (30,522 tokens)" in data.description
    batches = data.batches("train", batch_size=4, seq_len=64, seed=0)
    assert isinstance(batches, MaskedLMBatches) and batches.mlm_probability == 0.3
    batch = batches.get_batch(0)
    assert (batch["input_ids"][:, 0] == 101).all() and (batch["input_ids"][:, -1] == 102).all()
    masked = batch["input_ids"] == 103
    assert masked.any() and (batch["labels"][masked] != -100).all()
    with pytest.raises(KiloError, match="unknown split 'test'"):
        data.batches("test", 4, 64, 0)
