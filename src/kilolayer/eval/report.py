"""Results files: a JSON record and a Markdown table beside the FoundationLayerNorm paper's rows.

Paper: Shen 2022, arXiv 2204.04477. It gives one number per task without naming lm-eval's metric;
it is placed beside each task's headline metric (acc; acc_norm for HellaSwag, as lm-eval reports it).
"""

from __future__ import annotations

import json
from pathlib import Path

# task: (headline metric, paper GPT-1k value in %, chance level in %, description)
ZERO_SHOT_REFERENCE = {
    "lambada_openai": ("acc", 0.72, 0.0, "LAMBADA (OpenAI) test"),
    "piqa": ("acc", 55.17, 50.0, "PIQA validation"),
    "hellaswag": ("acc_norm", 25.54, 25.0, "HellaSwag validation"),
    "winogrande": ("acc", 50.36, 50.0, "Winogrande 1.1 xl dev"),
}
PAPER_BERT_1K = {"qqp": {"accuracy": 73.0, "precision": 72.0, "recall": 69.0, "f1": 70.0}}
CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1")


def write_json(path: Path, record: dict) -> Path:
    """Replace ``path`` with the record's JSON through ``kilolayer.atomic`` (an earlier report stays until it is complete)."""
    from ..atomic import write_text

    return write_text(path, json.dumps(record, indent=2) + "\n")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _plain(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def zero_shot_markdown(record: dict) -> str:
    """The eval record as a table: each metric ± stderr, examples, the paper's GPT-1k value, chance."""
    lines = [
        f"# Zero-shot evaluation: {record['model_dir']}",
        "",
        f"Model: {record['model']}  ",
        f"lm-eval {record['lm_eval_version']}, kilolayer {record['kilolayer_version']}, data: {record['data']['source']}"
        + (f", limit {record['limit']} examples per task" if record.get("limit") else ""),
        "",
    ]
    if record.get("tasks"):
        lines += [
            "| task | metric | kilolayer (%) | ± stderr | examples | paper GPT-1k (%) | chance (%) | seconds |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for task, result in record["tasks"].items():
            headline, paper, chance, description = ZERO_SHOT_REFERENCE[task]
            for metric, value in result["metrics"].items():
                if metric == "perplexity":
                    shown, error, chance_cell = f"{value['value']:.4g}", _plain(value["stderr"]), "—"
                else:
                    shown, error, chance_cell = _percent(value["value"]), _percent(value["stderr"]), f"{chance:g}"
                paper_cell = f"{paper:g}" if metric == headline else ""
                lines.append(
                    f"| {description} | {metric} | {shown} | {error} | {result['examples']} | {paper_cell} | {chance_cell} | {result['seconds']:g} |"
                )
        lines += ["", "LAMBADA perplexity is not a percentage; the paper reports no perplexity. Chance for LAMBADA acc is ≈ 0 (open vocabulary)."]
        if "hellaswag" in record["tasks"] and record["data"]["source"] == "local":
            lines.append("The local HellaSwag file is a derived text version of the validation set (see the data README).")
    if record.get("perplexity"):
        result = record["perplexity"]
        lines += [
            "",
            f"Perplexity of {result['file']}: **{result['perplexity']:.4g}** "
            f"({result['tokens']} tokens, window {result['window']}, stride {result['stride']}).",
        ]
    return "\n".join(lines) + "\n"


def finetune_markdown(record: dict) -> str:
    """Test metrics of a fine-tuning run beside the paper's BERT-1k row, with the split caveat."""
    task = record["task"]
    test = record["test_metrics"]
    lines = [
        f"# Fine-tuning on {task.upper()}: {record['model_dir']}",
        "",
        f"Model: {record['model']}  ",
        f"Splits: {record['splits_note']}  ",
        f"Examples: train {record['examples']['train']}, validation {record['examples']['validation']}, test {record['examples']['test']}. "
        f"Best validation score {record['best_validation_score']:.4f} at step {record['best_step']} of {record['steps']}"
        + (" (stopped early)." if record["stopped_early"] else "."),
        "",
        "| model | accuracy (%) | precision (%) | recall (%) | F1 (%) |",
        "|---|---:|---:|---:|---:|",
        "| kilolayer (test split) | " + " | ".join(_percent(test[name]) for name in CLASSIFICATION_METRICS) + " |",
    ]
    paper = PAPER_BERT_1K.get(task)
    if paper:
        lines.append("| paper BERT-1k | " + " | ".join(f"{paper[name]:g}" for name in CLASSIFICATION_METRICS) + " |")
    else:
        lines.append("| paper BERT-1k | — | — | — | — |")
    lines += ["", "Positive class: label 1 (duplicate / paraphrase)."]
    return "\n".join(lines) + "\n"
