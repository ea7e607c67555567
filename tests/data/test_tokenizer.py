"""Tokenizers: the reference vocabularies give their known ids; trained ones respect their size and specials."""

from __future__ import annotations

import pytest

from kilolayer.data import tokenizer as tokenizer_module
from kilolayer.data.corpus import read_documents
from kilolayer.data.tokenizer import load_tokenizer, resolve_tokenizer, train_tokenizer
from kilolayer.errors import KiloError

SAMPLE = "Hello  wörld!\n\n\tTabs, ünïcode 日本語 and emoji 🙂 — round trip."


def test_gpt2_reference_vocabulary(gpt2):
    assert len(gpt2) == 50257
    assert gpt2("Hello world")["input_ids"] == [15496, 995]
    assert gpt2.eos_token_id == 50256
    assert gpt2.decode(gpt2(SAMPLE)["input_ids"]) == SAMPLE


def test_bert_reference_vocabulary(bert):
    assert len(bert) == 30522
    assert bert("Hello World")["input_ids"] == [101, 7592, 2088, 102]
    assert (bert.pad_token_id, bert.unk_token_id, bert.cls_token_id, bert.sep_token_id, bert.mask_token_id) == (0, 100, 101, 102, 103)


def test_trained_bpe_respects_size_round_trips_and_reloads(wiki_slice, tmp_path):
    tokenizer = train_tokenizer([wiki_slice], "bpe", 600, tmp_path / "bpe")
    assert len(tokenizer) == 600
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|endoftext|>"
    assert tokenizer.bos_token_id == tokenizer.eos_token_id
    for text in [SAMPLE, *read_documents(wiki_slice)[:5]]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    reloaded = load_tokenizer(str(tmp_path / "bpe"))
    assert reloaded(SAMPLE)["input_ids"] == tokenizer(SAMPLE)["input_ids"]
    assert reloaded.eos_token_id == tokenizer.eos_token_id


def test_trained_wordpiece_is_bert_style(wiki_slice, tmp_path):
    tokenizer = train_tokenizer([wiki_slice], "wordpiece", 600, tmp_path / "wordpiece")
    assert len(tokenizer) <= 600
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = tokenizer("The Olympic Games")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the olympic games"
    reloaded = load_tokenizer(str(tmp_path / "wordpiece"))
    assert reloaded("The Olympic Games")["input_ids"] == ids
    assert reloaded.mask_token_id == 4


def test_resolve_train_caches_by_content(wiki_slice, tmp_path, monkeypatch):
    first = resolve_tokenizer("train", "gpt", [wiki_slice], 600, tmp_path)
    monkeypatch.setattr(tokenizer_module, "train_tokenizer", lambda *args: pytest.fail("trained again despite the cache"))
    second = resolve_tokenizer("train", "gpt", [wiki_slice], 600, tmp_path)
    assert second(SAMPLE)["input_ids"] == first(SAMPLE)["input_ids"]
    assert [path.name.startswith("bpe-600-") for path in tmp_path.iterdir()] == [True]


def test_resolve_checks_the_special_tokens_the_arch_needs(shared_data, monkeypatch):
    monkeypatch.setenv("KILOLAYER_DATA", str(shared_data))
    with pytest.raises(KiloError, match="has no eos_token, which gpt training needs"):
        resolve_tokenizer("bert-base-uncased", "gpt", [], 0, shared_data)
    with pytest.raises(KiloError, match="has no cls_token, sep_token, mask_token, pad_token, which bert training needs"):
        resolve_tokenizer("gpt2", "bert", [], 0, shared_data)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda path: train_tokenizer([path], "bpe", 200), "byte-level BPE needs more than 257 tokens"),
        (lambda path: train_tokenizer([path], "wordpiece", 10), "WordPiece vocabulary needs at least 20 tokens"),
        (lambda path: train_tokenizer([path], "unigram", 600), "unknown tokenizer kind 'unigram'"),
        (lambda path: load_tokenizer(str(path.parent / "no-such-folder")), "holds no tokenizer.json"),
    ],
)
def test_bad_tokenizer_requests(wiki_slice, call, message):
    with pytest.raises(KiloError, match=message):
        call(wiki_slice)


def test_reference_name_without_data_dir_says_where_to_look(monkeypatch):
    monkeypatch.delenv("KILOLAYER_DATA", raising=False)
    with pytest.raises(KiloError, match="set KILOLAYER_DATA"):
        load_tokenizer("gpt2")
