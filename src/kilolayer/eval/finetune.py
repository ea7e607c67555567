"""GLUE sentence-pair fine-tuning (QQP, MRPC) of an exported model, as the paper does for BERT-1k.

Splits (see shared/data/README.md): QQP's train split is not available offline, so its dev set is
split by ``idx % 4`` (0 → test, 10,108 pairs; else → train, 30,322 pairs) unless
``glue/qqp/train.jsonl`` exists; MRPC uses its train and test files. Every 10th training pair
(positions 0, 10, 20, …) is held out as the validation slice that picks the best evaluation and
stops training early. The pieces are the pretraining engine's (``kilolayer.train``): settings in a
``TrainConfig``, its AdamW, LR schedule, atomic checkpoints, resume check and model export, so a
fine-tuning run is configured, checkpointed and resumed like a pretraining run.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

from ..errors import KiloError
from ..paths import check_writable_folder
from .metrics import binary_metrics
from .task_data import read_jsonl

TASK_FIELDS = {"qqp": ("question1", "question2"), "mrpc": ("sentence1", "sentence2")}
VALIDATION_EVERY = 10  # every 10th training pair is validation

# BERT's fine-tuning recipe (Devlin et al. 2019): AdamW, 10 % linear warmup, linear decay to 0,
# batch 32, 3 epochs, lr from {2, 3, 5}e-5. The paper gives no fine-tuning settings.
DEFAULTS = {
    "lr": 3e-5,
    "batch_size": 32,
    "seq_len": 128,
    "schedule": "linear",
    "min_lr_ratio": 0.0,
    "weight_decay": 0.01,
    "adam_beta2": 0.999,
    "grad_clip": 1.0,
}
WARMUP_FRACTION = 0.1


def load_splits(task: str, data_dir: Path, limit: int | None = None) -> tuple[dict[str, list[dict]], str]:
    """({"train", "validation", "test"}: rows, a sentence describing the split for every report)."""
    if task not in TASK_FIELDS:
        raise KiloError(f"unknown fine-tuning task {task!r}; choose from {', '.join(TASK_FIELDS)}")
    folder = data_dir / "glue" / task

    def rows(name: str) -> list[dict]:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise KiloError(
                f"{task} needs {path.relative_to(data_dir)}, not found in {data_dir}; "
                f"point --data-dir (or KILOLAYER_DATA) at the folder laid out like shared/data"
            )
        return read_jsonl(path)

    if task == "qqp" and not (folder / "train.jsonl").is_file():
        dev = rows("dev")
        train = [row for row in dev if row["idx"] % 4]
        test = [row for row in dev if row["idx"] % 4 == 0]
        note = (
            "QQP train is not available offline: the GLUE dev set is split by idx % 4 "
            f"(idx % 4 == 0 → test, {len(test)} pairs; others → train, {len(train)} pairs)"
        )
    else:
        train, test = rows("train"), rows("dev" if task == "qqp" else "test")
        note = f"{task.upper()} train file for training, {'dev' if task == 'qqp' else 'test'} file for the test"
    if limit:
        train, test = train[:limit], test[:limit]
        note += f"; limited to the first {limit} pairs of each"
    note += f"; validation = every {VALIDATION_EVERY}th training pair"
    splits = {
        "train": [row for position, row in enumerate(train) if position % VALIDATION_EVERY],
        "validation": train[::VALIDATION_EVERY],
        "test": test,
    }
    return splits, note


def encode(tokenizer, task: str, rows: list[dict], max_length: int) -> list[dict]:
    """Tokenized pairs, each with its label: [CLS] a [SEP] b [SEP] with segment ids for BERT; for a tokenizer
    without a pair template (GPT's byte-level BPE) a <eos> b, so the model sees where one sentence ends."""
    first, second = TASK_FIELDS[task]
    if tokenizer.sep_token is None:
        texts = [f"{row[first]}{tokenizer.eos_token}{row[second]}" for row in rows]
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
    else:
        encoded = tokenizer([row[first] for row in rows], [row[second] for row in rows], truncation=True, max_length=max_length)
    return [
        {**{key: values[index] for key, values in encoded.items()}, "labels": int(row["label"])}
        for index, row in enumerate(rows)
    ]


def predict(model, tokenizer, examples: list[dict], batch_size: int) -> list[int]:
    """Argmax class of every example, in order."""
    import torch

    model.eval()
    predictions = []
    with torch.inference_mode():
        for begin in range(0, len(examples), batch_size):
            batch = _collate(tokenizer, examples[begin : begin + batch_size], model.device)
            batch.pop("labels")
            predictions += model(**batch).logits.argmax(-1).tolist()
    return predictions


def _collate(tokenizer, examples: list[dict], device) -> dict:
    return {key: value.to(device) for key, value in tokenizer.pad(examples, return_tensors="pt").items()}


def validation_score(metrics: dict) -> float:
    """GLUE's score for QQP and MRPC: the mean of accuracy and F1."""
    return (metrics["accuracy"] + metrics["f1"]) / 2


def check_out_dir(out_dir: Path, model_dir: Path) -> None:
    """``--out`` must be new, empty, or an earlier fine-tuning run, and must not hold the model being tuned."""
    if out_dir.exists() and not out_dir.is_dir():
        raise KiloError(f"--out {out_dir} is a file; give a folder")
    if Path(model_dir).resolve().is_relative_to(out_dir.resolve()):
        raise KiloError(f"--out {out_dir} holds the model being fine-tuned ({model_dir}); choose another --out (default MODEL_DIR/finetune-TASK)")
    check_writable_folder(out_dir, "--out")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if (out_dir / "config.yaml").is_file():
        raise KiloError(f"--out {out_dir} holds a pretraining run; choose another --out (default MODEL_DIR/finetune-TASK)")
    if not ((out_dir / "finetune.json").is_file() or (out_dir / "checkpoints").is_dir()):
        raise KiloError(f"--out {out_dir} exists, is not empty and holds no fine-tuning run; choose a new or empty folder")


def resolve_train_config(config, train_size: int, epochs: int, train_options: dict):
    """(TrainConfig, steps per epoch): ``DEFAULTS`` < ``train_options``; max_steps from the epochs (a step is
    batch_size × grad_accum pairs), a 10 % warmup, one evaluation per epoch and at most the model's positions
    unless given."""
    from ..train.config import TrainConfig

    if "max_steps" in train_options:
        raise KiloError("finetune sets train.max_steps from --epochs; give --epochs instead")
    pairs_per_step = train_options.get("batch_size", DEFAULTS["batch_size"]) * train_options.get("grad_accum", 1)
    steps_per_epoch = math.ceil(train_size / pairs_per_step)
    max_steps = epochs * steps_per_epoch
    max_positions = config.max_position_embeddings
    options = {
        **DEFAULTS,
        "seq_len": min(DEFAULTS["seq_len"], max_positions),
        "warmup_steps": round(WARMUP_FRACTION * max_steps),
        "eval_every": steps_per_epoch,
        **train_options,
        "max_steps": max_steps,
    }
    if options["seq_len"] > max_positions:
        raise KiloError(f"--seq-len {options['seq_len']} exceeds the model's {max_positions} positions; give at most {max_positions}")
    return TrainConfig.from_dict(options), steps_per_epoch


def finetune(
    model_dir: str | Path,
    task: str,
    data_dir: Path,
    out_dir: str | Path,
    epochs: int = 3,
    patience: int = 3,
    limit: int | None = None,
    resume: bool = True,
    device: str | None = None,
    **train_options,
) -> dict:
    """Fine-tune, keep the best validation model in ``out_dir/model``, score it on the test split.

    ``train_options`` are TrainConfig fields over ``DEFAULTS`` (lr, batch_size, seq_len, eval_every,
    seed, …). An evaluation on the validation slice happens every ``eval_every`` steps (default: once
    per epoch) and writes a checkpoint with the pretraining engine's writer; ``patience`` evaluations
    without improvement stop the run. With ``resume`` a run continues from ``out_dir``'s newest valid
    checkpoint, as ``kilolayer train --resume auto`` does. Returns the record in ``out_dir/finetune.json``.
    """
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from ..train import checkpoint
    from ..train.distributed import Parallel
    from ..train.export import export_model
    from ..train.faults import Faults
    from ..train.guard import StabilityGuard
    from ..train.loop import build_optimizer, first_difference
    from ..train.process import ProcessSettings
    from ..train.schedule import learning_rate
    from .model_folder import check_loaded, check_weights, load_config, load_folder_tokenizer, pick_device
    from ..atomic import write_text
    from .report import finetune_markdown, write_json
    from . import text_to_text

    out_dir = Path(out_dir)
    check_out_dir(out_dir, Path(model_dir))
    splits, splits_note = load_splits(task, data_dir, limit)
    config = load_config(model_dir)
    check_weights(model_dir)
    device = pick_device(device)
    # An encoder-decoder is fine-tuned text-to-text (text_to_text.py), the others with a classification head.
    encode_pairs, collate, predict_labels, auto_class = (
        (text_to_text.encode, text_to_text.collate, text_to_text.predict, AutoModelForSeq2SeqLM)
        if getattr(config, "is_encoder_decoder", False)
        else (encode, _collate, predict, AutoModelForSequenceClassification)
    )
    tokenizer = load_folder_tokenizer(model_dir)
    if tokenizer.pad_token is None:  # GPT-2 BPE has none; pad with EOS (masked out anyway)
        tokenizer.pad_token = tokenizer.eos_token
    if not (splits["train"] and splits["validation"] and splits["test"]):
        sizes = ", ".join(f"{name} {len(rows)}" for name, rows in splits.items())
        raise KiloError(f"too few {task} pairs for train/validation/test ({sizes}); raise --limit")
    train_config, steps_per_epoch = resolve_train_config(config, len(splits["train"]), epochs, train_options)
    run_settings = {"train": {**train_config.to_dict(), "task": task, "limit": limit, "model_dir": str(model_dir)}}
    examples = {name: encode_pairs(tokenizer, task, rows, train_config.seq_len) for name, rows in splits.items()}

    checkpoint_root = out_dir / "checkpoints"
    found = checkpoint.latest_valid(checkpoint_root) if checkpoint_root.is_dir() else None
    if found and not resume:
        raise KiloError(f"--out {out_dir} already holds a fine-tuning run; continue it with --resume auto, or choose a new --out")
    if found and "run" not in found[1]:
        raise KiloError(f"--out {out_dir} holds checkpoints of another kind of run; choose another --out")
    if found:
        difference = first_difference(found[1]["run"], run_settings)
        if difference:
            raise KiloError(f"{found[0]} was fine-tuned with {difference}; resume with the same settings, or choose a new --out")

    parallel = Parallel(device=device)
    torch.manual_seed(train_config.seed)  # the classifier head's initialisation
    config.num_labels = 2
    model = auto_class.from_pretrained(model_dir, config=config).to(parallel.device)
    check_loaded(model, tokenizer, model_dir)
    if train_config.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = build_optimizer(model, train_config, sharded=False)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    guard = StabilityGuard(train_config)
    state = {"step": 0, "best_score": -math.inf, "best_step": 0, "evaluations_without_improvement": 0, "history": []}
    if found:
        folder, meta = found
        checkpoint.load_checkpoint(folder, meta, parallel=parallel, model=model, optimizer=optimizer, restore_rng=True)
        state = meta["loop"]
        guard = StabilityGuard(train_config, StabilityGuard.state_from(meta.get("guard") or {}))
        print(f"resumed from {folder} at step {state['step']}")
    process_settings = ProcessSettings(parallel.device)
    process_settings.apply()
    autocast = (
        (lambda: torch.autocast(parallel.device.type, dtype=torch.bfloat16))
        if train_config.precision == "bf16"
        else contextlib.nullcontext
    )
    pairs_per_step = train_config.batch_size * train_config.grad_accum

    resumed_from_step = state["step"]
    start = time.perf_counter()
    progress = tqdm(total=train_config.max_steps, initial=state["step"], desc=f"fine-tuning {task}")
    stopped_early = state["evaluations_without_improvement"] >= patience
    stopped_nonfinite = guard.diverged
    try:
        while state["step"] < train_config.max_steps and not stopped_early and not stopped_nonfinite:
            step = state["step"]
            epoch, position = divmod(step, steps_per_epoch)
            order = torch.randperm(len(examples["train"]), generator=torch.Generator().manual_seed(train_config.seed + epoch))
            indices = order[position * pairs_per_step : (position + 1) * pairs_per_step].tolist()
            model.train()
            loss = torch.zeros((), device=parallel.device)
            for begin in range(0, len(indices), train_config.batch_size):  # grad_accum micro-batches, mean over pairs
                micro = indices[begin : begin + train_config.batch_size]
                batch = collate(tokenizer, [examples["train"][index] for index in micro], model.device)
                with autocast():
                    micro_loss = model(**batch).loss * (len(micro) / len(indices))
                micro_loss.backward()
                loss += micro_loss.detach()
            if train_config.grad_clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(parameters, train_config.grad_clip)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
            verdict, _ = guard.check(step + 1, loss.item(), grad_norm.item())
            if verdict == "step":  # a non-finite step is skipped (the data moves on); max_bad_steps in a row stop the run
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(train_config, step)
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stopped_nonfinite = verdict in ("rollback", "stop")
            state["step"] = step + 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if state["step"] % train_config.eval_every == 0 or state["step"] == train_config.max_steps:
                metrics = binary_metrics(
                    [example["labels"] for example in examples["validation"]],
                    predict_labels(model, tokenizer, examples["validation"], train_config.batch_size),
                )
                score = validation_score(metrics)
                state["history"].append({"step": state["step"], "loss": loss.item(), "validation": metrics})
                if score > state["best_score"]:
                    state.update(best_score=score, best_step=state["step"], evaluations_without_improvement=0)
                    card = model_card(task, model_dir, splits_note, state["step"], metrics, auto_class.__name__)
                    export_model(model, tokenizer, out_dir / "model", card)
                else:
                    state["evaluations_without_improvement"] += 1
                stopped_early = state["evaluations_without_improvement"] >= patience
                progress.write(f"step {state['step']}: validation accuracy {metrics['accuracy']:.4f} F1 {metrics['f1']:.4f}")
                checkpoint.save_checkpoint(
                    checkpoint_root, state["step"], parallel=parallel, model=model, optimizer=optimizer,
                    state={"loop": state, "run": run_settings, "guard": guard.state_dict()}, keep=train_config.keep_checkpoints,
                    faults=Faults(),
                )
    finally:
        progress.close()
        process_settings.restore()
    if not (out_dir / "model").is_dir():
        raise KiloError(f"fine-tuning stopped on non-finite losses at step {state['step']} before any validation; lower train.lr")

    best = auto_class.from_pretrained(out_dir / "model").to(model.device)
    test_labels = [example["labels"] for example in examples["test"]]
    record = {
        "task": task,
        "model_dir": str(model_dir),
        "model": config.summary() if hasattr(config, "summary") else config.model_type,
        "splits_note": splits_note,
        "examples": {name: len(rows) for name, rows in examples.items()},
        "train_config": {
            key: getattr(train_config, key)
            for key in (*DEFAULTS, "grad_accum", "precision", "activation_checkpointing", "warmup_steps", "eval_every", "max_steps", "seed")
        },
        "epochs": epochs,
        "patience": patience,
        "steps": state["step"],
        "resumed_from_step": resumed_from_step,
        "best_step": state["best_step"],
        "best_validation_score": state["best_score"],
        "stopped_early": stopped_early,
        "stopped_nonfinite": stopped_nonfinite,
        "skipped_steps": guard.state.skipped_steps,
        "seconds_this_session": round(time.perf_counter() - start, 2),
        "history": state["history"],
        "test_metrics": binary_metrics(test_labels, predict_labels(best, tokenizer, examples["test"], train_config.batch_size)),
        "model_out": str(out_dir / "model"),
    }
    write_json(out_dir / "finetune.json", record)
    write_text(out_dir / "finetune.md", finetune_markdown(record))
    return record


def model_card(task: str, base: str | Path, splits_note: str, step: int, validation: dict, auto_class: str) -> str:
    """README.md of the exported fine-tuned model: what it was tuned on and how to load it."""
    return f"""# kilolayer model fine-tuned on GLUE {task.upper()}

Base model: `{base}`. Best validation evaluation at step {step}: accuracy {validation['accuracy']:.4f}, F1 {validation['f1']:.4f}
(label 1 = duplicate / paraphrase). Splits: {splits_note}.

```python
import kilolayer  # registers the kilolayer architecture with the Auto classes
from transformers import {auto_class}, AutoTokenizer

model = {auto_class}.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
```
"""
