"""GLUE pairs as text-to-text for encoder-decoders: T5's format, rank classification, the same finetune command."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from kilolayer.data.span_corruption import add_sentinels
from kilolayer.data.tokenizer import load_tokenizer
from kilolayer.eval import text_to_text
from kilolayer.eval.finetune import finetune, load_splits
from kilolayer.eval.metrics import binary_metrics
from kilolayer.train.metrics import read_metrics
from kilolayer.modeling import KiloConfig, KiloForConditionalGeneration


@pytest.fixture(scope="module")
def encdec_folder(shared_data, tmp_path_factory):
    """A random 2 + 2 x 32 encoder-decoder with the GPT-2 BPE, <pad> and sentinels, saved as pretraining exports it."""
    tokenizer = load_tokenizer("gpt2", shared_data)
    add_sentinels(tokenizer, 32)
    torch.manual_seed(0)
    config = KiloConfig(arch="encdec", num_layers=4, hidden_size=32, num_heads=2, vocab_size=len(tokenizer),
                        max_positions=128, scheme="deepnorm", pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("encdec-tiny")
    KiloForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_pairs_read_as_t5_text_and_labels_as_words(encdec_folder):
    tokenizer = AutoTokenizer.from_pretrained(encdec_folder)
    rows = [{"question1": "Is it?", "question2": "Was it?", "label": 1}, {"question1": "A", "question2": "B", "label": 0}]
    first, second = text_to_text.encode(tokenizer, "qqp", rows, max_length=64)
    assert tokenizer.decode(first["input_ids"]) == "qqp question1: Is it? question2: Was it?<|endoftext|>"
    assert tokenizer.decode(first["target_ids"]) == "duplicate<|endoftext|>" and first["labels"] == 1
    assert tokenizer.decode(second["target_ids"]) == "not_duplicate<|endoftext|>" and second["labels"] == 0
    batch = text_to_text.collate(tokenizer, [first, second], torch.device("cpu"))
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert (batch["labels"][0] == -100).sum() > 0 and (batch["labels"][1] != -100).all()  # "duplicate" is shorter


@torch.no_grad()
def test_rank_classification_picks_the_label_word_of_higher_likelihood(encdec_folder):
    tokenizer = AutoTokenizer.from_pretrained(encdec_folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(encdec_folder).eval()
    rows = [{"sentence1": f"sentence {i} here", "sentence2": f"another {i * 3}", "label": i % 2} for i in range(6)]
    examples = text_to_text.encode(tokenizer, "mrpc", rows, max_length=64)
    expected = []
    for example in examples:
        source = torch.tensor([example["input_ids"]])
        totals = [model(input_ids=source, labels=torch.tensor([target])).loss * len(target) for target in example["candidates"]]
        expected.append(int(torch.stack(totals).argmin()))
    assert text_to_text.predict(model, tokenizer, examples, batch_size=4) == expected


def test_mrpc_text_to_text_end_to_end_through_finetune(encdec_folder, shared_data, tmp_path):
    out = tmp_path / "run"
    record = finetune(encdec_folder, "mrpc", shared_data, out, epochs=2, limit=200, lr=3e-3, batch_size=32)
    assert record["examples"] == {"train": 180, "validation": 20, "test": 200}
    train_losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert train_losses[-1] < train_losses[0] < 20  # it learns to write the label words
    assert [r["step"] for r in record["history"]] == [6, 12]  # one validation per epoch
    for name in ("accuracy", "precision", "recall", "f1"):
        assert 0.0 <= record["test_metrics"][name] <= 1.0
    assert "AutoModelForSeq2SeqLM" in (out / "model" / "README.md").read_text()

    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    splits, _ = load_splits("mrpc", shared_data, limit=200)
    examples = text_to_text.encode(tokenizer, "mrpc", splits["test"], record["train_config"]["seq_len"])
    predictions = text_to_text.predict(model, tokenizer, examples, batch_size=32)
    assert binary_metrics([row["label"] for row in splits["test"]], predictions) == record["test_metrics"]


def test_zero_shot_on_an_encoder_decoder_is_a_one_line_error(encdec_folder, shared_data):
    from kilolayer.errors import KiloError
    from kilolayer.eval.zeroshot import evaluate_folder

    with pytest.raises(KiloError) as caught:
        evaluate_folder(encdec_folder, ["piqa"], shared_data)
    message = str(caught.value)
    assert "encoder-decoder" in message and "causal" in message and "\n" not in message
