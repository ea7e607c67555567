"""The documented one-line errors: missing data, wrong model type, no tokenizer (also through the CLI)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from kilolayer.data.tokenizer import load_tokenizer
from kilolayer.errors import KiloError
from kilolayer.eval.finetune import load_splits
from kilolayer.eval.zeroshot import evaluate_folder, parse_tasks
from kilolayer.modeling import KiloConfig, KiloForCausalLM


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(KiloError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_task_file_names_file_folder_and_fix(gpt_folder, tmp_path):
    message = one_line_error(evaluate_folder, gpt_folder, ["piqa"], tmp_path)
    assert "eval/piqa/valid.jsonl" in message and str(tmp_path) in message
    assert "--data-dir" in message and "KILOLAYER_DATA" in message


def test_missing_labels_file(gpt_folder, shared_data, tmp_path):
    (tmp_path / "eval/piqa").mkdir(parents=True)
    shutil.copy(shared_data / "eval/piqa/valid.jsonl", tmp_path / "eval/piqa/valid.jsonl")
    assert "eval/piqa/valid-labels.lst" in one_line_error(evaluate_folder, gpt_folder, ["piqa"], tmp_path)


def test_no_data_folder_offers_the_hub(gpt_folder):
    message = one_line_error(evaluate_folder, gpt_folder, ["piqa"], None)
    assert "--data-dir" in message and "--from-hub" in message


def test_masked_model_for_zero_shot(bert_folder, shared_data):
    message = one_line_error(evaluate_folder, bert_folder, ["piqa"], shared_data)
    assert "masked" in message and "causal" in message


def test_folder_without_tokenizer(gpt_folder, shared_data, tmp_path):
    shutil.copy(gpt_folder / "config.json", tmp_path / "config.json")
    message = one_line_error(evaluate_folder, tmp_path, ["piqa"], shared_data)
    assert "no tokenizer" in message and "save_pretrained" in message


def test_folder_without_model(shared_data, tmp_path):
    assert "config.json" in one_line_error(evaluate_folder, tmp_path, ["piqa"], shared_data)


def test_answer_longer_than_the_context(shared_data, tmp_path):
    tokenizer = load_tokenizer("gpt2", shared_data)
    config = KiloConfig(arch="gpt", num_layers=4, hidden_size=32, num_heads=2, vocab_size=len(tokenizer), max_positions=16)
    KiloForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    message = one_line_error(evaluate_folder, tmp_path, ["piqa"], shared_data, limit=2, batch_size=2)
    assert "16-token context" in message and "max_positions" in message


def test_unknown_task():
    message = one_line_error(parse_tasks, "piqa,arc_easy")
    assert "arc_easy" in message and "lambada_openai" in message


def test_missing_glue_file(tmp_path):
    message = one_line_error(load_splits, "mrpc", tmp_path)
    assert "glue/mrpc/train.jsonl" in message and "--data-dir" in message


@pytest.mark.parametrize("case", ["masked model", "missing data"])
def test_cli_exits_2_with_one_line(case, bert_folder, gpt_folder, shared_data, tmp_path):
    folder, data = (bert_folder, shared_data) if case == "masked model" else (gpt_folder, tmp_path)
    completed = subprocess.run(
        [sys.executable, "-m", "kilolayer", "eval", str(folder), "--tasks", "piqa", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=300,  # generous: the shared CI machine can be slow to import torch and transformers
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kilolayer eval: error: "), completed.stderr
