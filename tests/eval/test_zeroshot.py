"""Zero-shot numbers equal lm-eval's own task definitions run directly, and a hand check from logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kilolayer.eval.task_data import ZERO_SHOT_TASKS, read_jsonl
from kilolayer.eval.zeroshot import evaluate_folder

LIMIT = 20
BATCH_SIZE = 4
# lm-eval's own task definitions (its hub datasets swapped for the same local rows below)
BUILTIN_YAML = {
    "lambada_openai": "lambada/lambada_openai.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
}
DATA_FILE = {
    "lambada_openai": "eval/lambada_openai/lambada_test.jsonl",
    "piqa": "eval/piqa/valid.jsonl",
    "hellaswag": "eval/hellaswag/hellaswag_val.jsonl",
    "winogrande": "eval/winogrande/dev.jsonl",
}


@pytest.fixture(scope="module")
def tool_record(gpt_folder, shared_data):
    return evaluate_folder(gpt_folder, list(ZERO_SHOT_TASKS), shared_data, limit=LIMIT, batch_size=BATCH_SIZE, log_samples=True)


def load_folder(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def builtin_task(task: str, shared_data: Path, scratch: Path) -> dict:
    """lm-eval's shipped config for ``task``, reading the first LIMIT rows of our file as a json dataset.

    PIQA gets its labels from the .lst file; HellaSwag's process_docs is dropped because the
    derived file already holds its output (``query``, ``choices``).
    """
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / BUILTIN_YAML[task], resolve_func=True)
    rows = read_jsonl(shared_data / DATA_FILE[task])[:LIMIT]
    if task == "piqa":
        labels = (shared_data / "eval/piqa/valid-labels.lst").read_text().split()
        rows = [{**row, "label": int(label)} for row, label in zip(rows, labels)]
    data_file = scratch / f"{task}.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    split = config.get("validation_split") or config["test_split"]
    config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {split: str(data_file)}})
    config.pop("training_split", None)
    if task == "hellaswag":
        config["process_docs"] = None
    return config


def test_numbers_equal_lm_eval_run_directly(tool_record, gpt_folder, shared_data, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = load_folder(gpt_folder)
    direct = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=BATCH_SIZE),
        tasks=[builtin_task(task, shared_data, tmp_path) for task in ZERO_SHOT_TASKS],
        task_manager=TaskManager(include_defaults=False),
        limit=LIMIT,
    )
    for task in ZERO_SHOT_TASKS:
        ours = tool_record["tasks"][task]
        assert ours["examples"] == direct["n-samples"][task]["effective"] == LIMIT
        expected = {key.split(",")[0]: value for key, value in direct["results"][task].items() if key.endswith(",none") and "_stderr" not in key}
        assert set(ours["metrics"]) == set(expected)
        for metric, value in expected.items():
            assert ours["metrics"][metric]["value"] == pytest.approx(value, rel=1e-9), (task, metric)
            if metric != "perplexity":
                assert 0.0 <= ours["metrics"][metric]["value"] <= 1.0
                assert ours["metrics"][metric]["stderr"] is not None


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) summed over the continuation's tokens, from the logits."""
    context_ids = tokenizer(context)["input_ids"]
    continuation_ids = tokenizer(continuation)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([context_ids + continuation_ids])).logits[0]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    first = len(context_ids) - 1  # the logits at position i predict token i + 1
    return sum(log_probs[first + i, token].item() for i, token in enumerate(continuation_ids))


def test_piqa_picks_match_hand_computed_logprobs(tool_record, gpt_folder, shared_data):
    model, tokenizer = load_folder(gpt_folder)
    rows = read_jsonl(shared_data / "eval/piqa/valid.jsonl")[:3]
    labels = [int(label) for label in (shared_data / "eval/piqa/valid-labels.lst").read_text().split()[:3]]
    samples = {sample["doc_id"]: sample for sample in tool_record["tasks"]["piqa"]["samples"]}
    for doc_id, (row, label) in enumerate(zip(rows, labels)):
        context = f"Question: {row['goal']}\nAnswer:"
        by_hand = [continuation_logprob(model, tokenizer, context, " " + row[key]) for key in ("sol1", "sol2")]
        reported = samples[doc_id]
        assert reported["loglikelihoods"] == pytest.approx(by_hand, abs=1e-3)
        pick = max(range(2), key=lambda choice: by_hand[choice])
        assert max(range(2), key=lambda choice: reported["loglikelihoods"][choice]) == pick
        assert reported["metrics"]["acc"] == float(pick == label)
