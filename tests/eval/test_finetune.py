"""GLUE fine-tuning: the documented splits, an end-to-end MRPC run, and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kilolayer.errors import KiloError
from kilolayer.eval.finetune import encode, finetune, load_splits, predict
from kilolayer.eval.metrics import binary_metrics
from kilolayer.train.metrics import read_metrics

QUICK = {"limit": 200, "lr": 1e-3, "batch_size": 32}


def test_qqp_splits_the_dev_set_by_idx(shared_data):
    splits, note = load_splits("qqp", shared_data)
    assert len(splits["train"]) + len(splits["validation"]) == 30322
    assert len(splits["validation"]) == 3033  # every 10th training pair
    assert len(splits["test"]) == 10108
    assert all(row["idx"] % 4 == 0 for row in splits["test"])
    assert not any(row["idx"] % 4 == 0 for row in splits["train"] + splits["validation"])
    assert "idx % 4" in note


def test_mrpc_end_to_end_writes_all_four_metrics(bert_folder, shared_data, tmp_path):
    out = tmp_path / "run"
    record = finetune(bert_folder, "mrpc", shared_data, out, epochs=1, **QUICK)
    assert record["examples"] == {"train": 180, "validation": 20, "test": 200}
    assert json.loads((out / "finetune.json").read_text()) == json.loads(json.dumps(record))
    for name in ("accuracy", "precision", "recall", "f1"):
        assert 0.0 <= record["test_metrics"][name] <= 1.0
    assert "| paper BERT-1k |" in (out / "finetune.md").read_text()

    # The exported folder is a complete HF model: reloaded, it reproduces the reported test metrics.
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    splits, _ = load_splits("mrpc", shared_data, limit=200)
    examples = encode(tokenizer, "mrpc", splits["test"], record["train_config"]["seq_len"])
    predictions = predict(model, tokenizer, examples, batch_size=32)
    assert binary_metrics([row["label"] for row in splits["test"]], predictions) == record["test_metrics"]


@pytest.mark.slow
def test_resumed_run_continues_exactly(bert_folder, shared_data, tmp_path):
    """Two epochs in one go equal one epoch, then a resumed second (same constant LR, so max_steps may change)."""
    options = {**QUICK, "limit": 100, "schedule": "constant", "warmup_steps": 0}  # 3 steps per epoch
    straight = finetune(bert_folder, "mrpc", shared_data, tmp_path / "straight", epochs=2, **options)
    finetune(bert_folder, "mrpc", shared_data, tmp_path / "resumed", epochs=1, **options)
    with pytest.raises(KiloError, match="already holds a run"):
        finetune(bert_folder, "mrpc", shared_data, tmp_path / "resumed", epochs=2, resume=False, **options)
    with pytest.raises(KiloError, match="train.lr"):
        finetune(bert_folder, "mrpc", shared_data, tmp_path / "resumed", epochs=2, **{**options, "lr": 2e-3})
    resumed = finetune(bert_folder, "mrpc", shared_data, tmp_path / "resumed", epochs=2, **options)
    assert resumed["resumed_from_step"] == 3 and straight["resumed_from_step"] == 0
    assert resumed["history"] == straight["history"]
    assert resumed["test_metrics"] == straight["test_metrics"]
    final = "checkpoints/step-00000006/model.safetensors"
    for name, tensor in load_file(tmp_path / "straight" / final).items():
        assert torch.equal(tensor, load_file(tmp_path / "resumed" / final)[name]), name


def test_out_of_another_kind_of_run_is_refused_before_anything_is_written(bert_folder, shared_data, tmp_path):
    pretraining = tmp_path / "pretraining"
    (pretraining / "model").mkdir(parents=True)
    (pretraining / "config.yaml").write_text("model: {}\ntrain: {}\n")
    (pretraining / "model" / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(KiloError, match="holds a pretraining run"):
        finetune(bert_folder, "mrpc", shared_data, pretraining, epochs=1, **QUICK)
    with pytest.raises(KiloError, match="holds the model being fine-tuned"):
        finetune(bert_folder, "mrpc", shared_data, bert_folder.parent, epochs=1, **QUICK)
    assert (pretraining / "model" / "model.safetensors").read_bytes() == b"weights"
    assert sorted(path.name for path in pretraining.iterdir()) == ["config.yaml", "model"]


def test_gpt_sentence_pairs_are_joined_by_a_separator(gpt_folder, shared_data):
    tokenizer = AutoTokenizer.from_pretrained(gpt_folder)
    splits, _ = load_splits("mrpc", shared_data, limit=20)
    row = splits["train"][0]
    ids = encode(tokenizer, "mrpc", [row], max_length=256)[0]["input_ids"]
    first = tokenizer(row["sentence1"])["input_ids"]
    assert ids[: len(first) + 1] == [*first, tokenizer.eos_token_id]


def test_accumulation_gives_the_same_steps_as_one_larger_batch(bert_folder, shared_data, tmp_path):
    options = {**QUICK, "limit": 100, "schedule": "constant", "warmup_steps": 0}
    whole = finetune(bert_folder, "mrpc", shared_data, tmp_path / "whole", epochs=1, **options)
    split = finetune(bert_folder, "mrpc", shared_data, tmp_path / "split", epochs=1, **{**options, "batch_size": 16, "grad_accum": 2})
    assert split["steps"] == whole["steps"] == 3 and split["train_config"]["grad_accum"] == 2
    final = "checkpoints/step-00000003/model.safetensors"
    for name, tensor in load_file(tmp_path / "whole" / final).items():
        torch.testing.assert_close(load_file(tmp_path / "split" / final)[name], tensor, rtol=1e-4, atol=1e-5)


def test_a_finetune_run_folder_is_a_training_run_folder(bert_folder, shared_data, tmp_path, capsys):
    """The engine's files (config.yaml of kind finetune, metrics.jsonl, TensorBoard), a recipe file as --preset, and
    a resumed run with more epochs that continues the schedule instead of jumping back up (with a warning)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  lr: 1.0e-3\n  batch_size: 32\n  schedule: linear\n  min_lr_ratio: 0.5\n  log_every: 1\n")
    out = tmp_path / "run"
    first = finetune(bert_folder, "mrpc", shared_data, out, epochs=1, limit=200, preset=str(recipe), progress=False)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["kind"] == "finetune" and saved["finetune"]["task"] == "mrpc"
    assert saved["train"]["lr"] == 1e-3 and saved["train"]["decay_steps"] == first["steps"] == 6
    assert list((out / "tensorboard").iterdir())
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "valid"] == [6]

    capsys.readouterr()
    second = finetune(bert_folder, "mrpc", shared_data, out, epochs=2, limit=200, preset=str(recipe), progress=False)
    assert "past the schedule's horizon (step 6, train.decay_steps)" in capsys.readouterr().err
    assert second["steps"] == 12 and second["resumed_from_step"] == 6
    lrs = [r["lr"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert len(lrs) == 12 and all(later <= earlier for earlier, later in zip(lrs[1:], lrs[2:]))  # after the warmup step
    assert lrs[-1] == pytest.approx(0.5e-3)  # the floor, held past the horizon


@pytest.mark.slow
def test_finetune_under_ddp_matches_one_process_accumulating(bert_folder, shared_data, tmp_path):
    """torchrun with 2 ranks × 8 pairs takes the same pairs per step as one process accumulating 2 × 8."""
    options = {"limit": 100, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "batch_size": 8}
    reference = finetune(bert_folder, "mrpc", shared_data, tmp_path / "one", epochs=1, grad_accum=2, progress=False, **options)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "kilolayer", "finetune",
        str(bert_folder), "--task", "mrpc", "--data-dir", str(shared_data), "--out", str(tmp_path / "ddp"), "--epochs", "1",
        "--limit", "100", "--set", "train.lr=1e-3", "--set", "train.schedule=constant", "--set", "train.warmup_steps=0",
        "--set", "train.batch_size=8",
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "finetune.json").read_text())
    assert ddp["steps"] == reference["steps"] == 6
    start = next(r for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if r["kind"] == "event" and r["event"] == "start")
    assert start["world_size"] == 2 and start["strategy"] == "ddp"
    final = "checkpoints/step-00000006/model.safetensors"
    expected = load_file(tmp_path / "one" / final)
    for name, tensor in load_file(tmp_path / "ddp" / final).items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-4, atol=1e-5)


def test_finetune_rolls_back_on_repeated_nan_gradients(bert_folder, shared_data, tmp_path, monkeypatch):
    """The engine's stability guard guards fine-tuning too: step 5 fails three times, the run goes back to the
    checkpoint of step 3 (one per epoch) with half the LR and finishes."""
    monkeypatch.setenv("KILOLAYER_FAULTS", "nan_grad@5*3")
    options = {"limit": 100, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "max_bad_steps": 3}
    record = finetune(bert_folder, "mrpc", shared_data, tmp_path / "run", epochs=2, progress=False, **options)
    assert (record["steps"], record["skipped_steps"], record["rollbacks"], record["stopped_by"]) == (6, 3, 1, "max_steps")
    rollback = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("event") == "rollback")
    assert (rollback["to_step"], rollback["lr_scale"]) == (3, 0.5)
