"""Zero-shot evaluation through lm-evaluation-harness on the in-memory model.

The scoring is lm-eval's (the field's standard); kilolayer only supplies the task definitions over
local files (``tasks/*.yaml``) and turns lm-eval's output into one plain record per task.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..errors import KiloError
from .task_data import ZERO_SHOT_TASKS, check_task_files, file_sha256

# lm-eval searches for the largest batch that fits by catching out-of-memory errors. On a CPU the
# kernel kills the process instead of raising one, so "auto" means this fixed size there.
CPU_AUTO_BATCH_SIZE = 8


def parse_tasks(spec: str) -> list[str]:
    """``"piqa,hellaswag"`` → ["piqa", "hellaswag"], each checked against the shipped definitions."""
    tasks = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in tasks if name not in ZERO_SHOT_TASKS]
    if unknown or not tasks:
        raise KiloError(f"unknown task {', '.join(unknown) or repr(spec)}; choose from {','.join(ZERO_SHOT_TASKS)}")
    return tasks


def resolve_batch_size(batch_size: int | str, device) -> int | str:
    """``auto`` stays lm-eval's search on a GPU and becomes ``CPU_AUTO_BATCH_SIZE`` on a CPU."""
    return CPU_AUTO_BATCH_SIZE if batch_size == "auto" and device.type == "cpu" else batch_size


def data_files(tasks: list[str], data_dir: Path) -> dict[str, str]:
    """{relative path: sha256} of every file the tasks read; KiloError for the first missing one."""
    return {
        str(path.relative_to(data_dir)): file_sha256(path) for task in tasks for path in check_task_files(task, data_dir)
    }


def evaluate_zero_shot(
    model,
    tokenizer,
    tasks: list[str],
    data_dir: Path | None,
    limit: int | None = None,
    batch_size: int | str = "auto",
    log_samples: bool = False,
) -> dict[str, dict]:
    """{task: {"examples", "seconds", "metrics": {name: {"value", "stderr"}}[, "samples"]}}.

    ``data_dir`` None uses lm-eval's own task definitions and hub datasets (needs network). Each task
    runs in its own ``simple_evaluate`` call so that its wall time is measured on its own.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if data_dir is None:
        task_manager = TaskManager()
    else:
        for task in tasks:  # fail on a missing file before any model work
            check_task_files(task, data_dir)
        task_manager = TaskManager(
            include_path=str(Path(__file__).parent / "tasks"),
            include_defaults=False,
            metadata={"data_dir": str(data_dir)},
        )
    language_model = HFLM(
        pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=resolve_batch_size(batch_size, model.device)
    )
    results = {}
    # lm-eval scores with plain forwards, model(ids).logits, which would keep a KV cache of every layer
    # (config.use_cache); its generate() calls ask for the cache themselves.
    use_cache, model.config.use_cache = model.config.use_cache, False
    try:
        for task in tasks:
            start = time.perf_counter()
            try:
                output = simple_evaluate(
                    model=language_model, tasks=[task], task_manager=task_manager, limit=limit, log_samples=log_samples
                )
            except AssertionError:
                # lm-eval asserts (without a message) that every answer fits in the model's context.
                raise KiloError(
                    f"lm-eval stopped on {task}: an answer is longer than the model's {language_model.max_length}-token "
                    f"context, which lm-eval cannot score; evaluate a model with more positions (max_positions)"
                ) from None
            results[task] = {
                "examples": output["n-samples"][task]["effective"],
                "seconds": round(time.perf_counter() - start, 2),
                "metrics": parse_metrics(output["results"][task]),
            }
            if log_samples:
                results[task]["samples"] = [sample_record(sample) for sample in output["samples"][task]]
    finally:
        model.config.use_cache = use_cache
    return results


def parse_metrics(task_result: dict) -> dict[str, dict]:
    """lm-eval's flat ``{"acc,none": v, "acc_stderr,none": s}`` → ``{"acc": {"value": v, "stderr": s}}``."""
    metrics = {}
    for key, value in task_result.items():
        name, comma, filter_name = key.partition(",")
        if not comma or name.endswith("_stderr"):
            continue
        stderr = task_result.get(f"{name}_stderr,{filter_name}")
        metrics[name] = {"value": float(value), "stderr": finite_or_none(stderr)}
    return metrics


def finite_or_none(value) -> float | None:
    """lm-eval writes "N/A" (or nan) where a standard error is undefined; JSON gets null."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def sample_record(sample: dict) -> dict:
    """One scored example: the summed log-probability of each continuation and the per-example metrics."""
    return {
        "doc_id": sample["doc_id"],
        "target": sample["target"],
        "loglikelihoods": [float(response[0]) for response in sample["filtered_resps"]],
        "metrics": {name: float(sample[name]) for name in ("acc", "acc_norm", "perplexity") if name in sample},
    }


def evaluate_folder(
    model_dir: str | Path,
    tasks: list[str],
    data_dir: Path | None,
    from_hub: bool = False,
    limit: int | None = None,
    batch_size: int | str = "auto",
    perplexity_file: str | Path | None = None,
    log_samples: bool = False,
    device: str | None = None,
) -> dict:
    """The results record of ``kilolayer eval``: zero-shot tasks and/or perplexity of a model folder.

    Local task data (``data_dir``) is the default; ``from_hub`` uses lm-eval's own definitions and
    hub datasets instead, so that a missing data folder never turns into a silent download.
    """
    from importlib.metadata import version

    from .model_folder import load_causal_lm, pick_device
    from .perplexity import file_perplexity

    if tasks and data_dir is None and not from_hub:
        raise KiloError(
            "no data folder for the zero-shot tasks; give --data-dir or set KILOLAYER_DATA (layout of shared/data: "
            "eval/piqa/valid.jsonl, ...), or pass --from-hub to use lm-eval's hub datasets (needs network)"
        )
    files = data_files(tasks, data_dir) if tasks and not from_hub else {}
    purpose = "zero-shot evaluation" if tasks else "perplexity"
    model, tokenizer = load_causal_lm(model_dir, purpose)
    model.to(pick_device(device))
    config = model.config
    record = {
        "model_dir": str(model_dir),
        "model": config.summary() if hasattr(config, "summary") else config.model_type,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "kilolayer_version": version("kilolayer"),
        "lm_eval_version": version("lm_eval"),
        "device": str(model.device),
        "batch_size": resolve_batch_size(batch_size, model.device),
        "limit": limit,
        "data": {"source": "hub" if from_hub else "local", "data_dir": None if from_hub else str(data_dir), "files": files},
    }
    if tasks:
        record["tasks"] = evaluate_zero_shot(model, tokenizer, tasks, None if from_hub else data_dir, limit, batch_size, log_samples)
    if perplexity_file:
        record["perplexity"] = file_perplexity(model, tokenizer, perplexity_file)
    return record
