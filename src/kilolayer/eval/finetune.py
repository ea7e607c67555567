"""GLUE sentence-pair fine-tuning (QQP, MRPC) of an exported model, as the paper does for BERT-1k.

Splits (see shared/data/README.md): QQP's train split is not available offline, so its dev set is
split by ``idx % 4`` (0 → test, 10,108 pairs; else → train, 30,322 pairs) unless
``glue/qqp/train.jsonl`` exists; MRPC uses its train and test files. Every 10th training pair
(positions 0, 10, 20, …) is held out as the validation slice that picks the best evaluation and
stops training early.

Fine-tuning is a ``GlueTask`` run by the pretraining engine's ``Trainer`` (``kilolayer.train.loop``):
the same config resolution (``--preset`` from ``presets/finetune/``, ``--config``, ``--set train.*``),
accumulation, precision, activation checkpointing, the stability guard and rollback, DDP/FSDP under
torchrun, checkpoints and exact resume, config.yaml, metrics.jsonl and TensorBoard.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import KiloError
from ..train.task import Task, model_section
from .metrics import binary_metrics
from .task_data import read_jsonl

TASK_FIELDS = {"qqp": ("question1", "question2"), "mrpc": ("sentence1", "sentence2")}
VALIDATION_EVERY = 10  # every 10th training pair is validation
WARMUP_FRACTION = 0.1  # of the schedule's horizon (BERT's recipe)
DEFAULT_PRESET = "glue"


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


class PairBatches:
    """This rank's micro-batch ``index``: the next ``batch_size`` pairs of an endless stream of epochs, each a
    permutation of the training pairs seeded by ``seed + epoch``. A pure function of the index, so a resumed or
    rolled-back run sees exactly the pairs it would have; ranks take interleaved micro-batches."""

    def __init__(self, examples: list[dict], collate, tokenizer, batch_size: int, seed: int, rank: int, world_size: int):
        self.examples, self.collate, self.tokenizer = examples, collate, tokenizer
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.orders: dict[int, list[int]] = {}  # epoch → its permutation (a batch spans at most two epochs)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self.orders:
            self.orders = {key: value for key, value in self.orders.items() if key >= epoch - 1}
            self.orders[epoch] = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        return self.orders[epoch]

    def get_batch(self, index: int) -> dict:
        first = (index * self.world_size + self.rank) * self.batch_size
        count = len(self.examples)
        chosen = [self._order(position // count)[position % count] for position in range(first, first + self.batch_size)]
        return self.collate(self.tokenizer, [self.examples[i] for i in chosen], "cpu")


def check_out_dir(out_dir: Path, model_dir: Path) -> None:
    """``--out`` must not hold the model being tuned (the engine checks the rest: another kind of run, a foreign folder)."""
    if Path(model_dir).resolve().is_relative_to(Path(out_dir).resolve()):
        raise KiloError(f"--out {out_dir} holds the model being fine-tuned ({model_dir}); choose another --out (default MODEL_DIR/finetune-TASK)")


def resolve_train_config(
    model_config, train_size: int, epochs: int, recipe: dict, options: dict, world_size: int, stored_horizon: int | None
):
    """The TrainConfig of a fine-tuning run. The ``recipe`` (the preset's train section, its seq_len cut to the model's
    positions) under ``options`` (--config, --set), plus what the data decides: max_steps from the epochs (a step is
    batch_size × grad_accum × ranks pairs), a warmup of 10 % of the schedule's horizon (the first invocation's
    max_steps, so more --epochs on resume continue the same schedule), one evaluation and checkpoint per epoch."""
    from ..train.config import TrainConfig

    if "max_steps" in options:
        raise KiloError("finetune sets train.max_steps from --epochs; give --epochs instead")
    max_positions = model_config.max_position_embeddings
    if options.get("seq_len", 0) > max_positions:
        raise KiloError(f"train.seq_len {options['seq_len']} exceeds the model's {max_positions} positions; give at most {max_positions}")
    given = {**recipe, "seq_len": min(recipe.get("seq_len", max_positions), max_positions), **options}
    pairs_per_step = given.get("batch_size", 8) * given.get("grad_accum", 1) * world_size
    steps_per_epoch = math.ceil(train_size / pairs_per_step)
    max_steps = epochs * steps_per_epoch
    horizon = given.get("decay_steps") or stored_horizon or max_steps
    eval_every = given.get("eval_every", steps_per_epoch)
    resolved = {
        "warmup_steps": round(WARMUP_FRACTION * horizon),
        "eval_every": eval_every,
        "checkpoint_every": eval_every,
        **given,
        "decay_steps": horizon,
        "max_steps": max_steps,
    }
    return TrainConfig.from_dict(resolved)


class GlueTask(Task):
    """Sentence-pair classification of a pretrained folder: a classification head on GPT/BERT, or text-to-text
    (``text_to_text.py``) for an encoder-decoder. Validation metric: mean of accuracy and F1; the best is exported."""

    kind = "finetune"
    metric = "score"
    higher_is_better = True
    keeps_best = True

    def __init__(self, model_dir: Path, task: str, data_dir: Path, limit: int | None, patience: int):
        from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

        from . import text_to_text
        from .model_folder import check_weights, load_config, load_folder_tokenizer

        self.model_dir, self.task, self.limit, self.patience = Path(model_dir), task, limit, patience
        self.splits, self.splits_note = load_splits(task, data_dir, limit)
        if not all(self.splits.values()):
            sizes = ", ".join(f"{name} {len(rows)}" for name, rows in self.splits.items())
            raise KiloError(f"too few {task} pairs for train/validation/test ({sizes}); raise --limit")
        self.model_config = load_config(model_dir)
        check_weights(model_dir)
        # An encoder-decoder is fine-tuned text-to-text, the others with a classification head.
        self.encode, self.collate, self.predict, self.auto_class = (
            (text_to_text.encode, text_to_text.collate, text_to_text.predict, AutoModelForSeq2SeqLM)
            if getattr(self.model_config, "is_encoder_decoder", False)
            else (encode, _collate, predict, AutoModelForSequenceClassification)
        )
        self.model_config.num_labels = 2
        self.tokenizer = load_folder_tokenizer(model_dir)
        if self.tokenizer.pad_token is None:  # GPT-2 BPE has none; pad with EOS (masked out anyway)
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.description = f"GLUE {task.upper()}: {self.splits_note}"
        self.examples: dict[str, list[dict]] = {}

    def step_size(self, config, world_size: int) -> str:
        return f"{config.batch_size * config.grad_accum * world_size} pairs/step (at most {config.seq_len} tokens each)"

    def prepare(self, trainer) -> None:
        self.examples = {name: self.encode(self.tokenizer, self.task, rows, trainer.config.seq_len) for name, rows in self.splits.items()}

    def settings(self) -> dict:
        return {
            "finetune": {"task": self.task, "limit": self.limit, "model_dir": str(self.model_dir), "patience": self.patience},
            "model": model_section(self.model_config),
        }

    def build_model(self, device: torch.device) -> torch.nn.Module:
        from .model_folder import check_loaded

        model = self.auto_class.from_pretrained(self.model_dir, config=self.model_config).to(device)
        check_loaded(model, self.tokenizer, self.model_dir)
        return model

    def train_batches(self, config, rank: int, world_size: int) -> PairBatches:
        return PairBatches(self.examples["train"], self.collate, self.tokenizer, config.batch_size, config.seed, rank, world_size)

    def validate(self, trainer) -> dict:
        """Every rank scores the whole validation slice (same result everywhere; FSDP needs every rank's forwards)."""
        examples = self.examples["validation"]
        predictions = self.predict(trainer.model, self.tokenizer, examples, trainer.config.batch_size)
        metrics = binary_metrics([example["labels"] for example in examples], predictions)
        return {**metrics, "score": validation_score(metrics)}

    def card(self, trainer) -> dict:
        valid = trainer.last_valid
        return {
            "title": f"{self.model_dir.name} fine-tuned on GLUE {self.task.upper()}",
            "kind": f"sentence-pair classifier (GLUE {self.task.upper()}, label 1 = duplicate / paraphrase)",
            "auto_class": self.auto_class.__name__,
            "table": {
                "base model": f"`{self.model_dir}`",
                "task": f"GLUE {self.task.upper()}",
                "best validation": (
                    f"step {valid['step']}: accuracy {valid['accuracy']:.4f}, F1 {valid['f1']:.4f} (score {valid['score']:.4f})"
                ),
            },
        }

    def finish(self, trainer, result) -> None:
        """Score the best model on the test split; write finetune.json and finetune.md (rank 0)."""
        from ..atomic import write_text
        from ..train.metrics import read_metrics
        from .report import finetune_markdown, write_json

        out_dir = trainer.folder.out_dir
        if result.stopped_by == "signal":  # checkpointed; the rerun continues and reports
            self.record = {"stopped_by": "signal", "steps": result.steps, "checkpoint": str(result.checkpoint)}
            return
        if result.export_dir is None:
            raise KiloError(f"fine-tuning stopped ({result.stopped_by}) at step {result.steps} before any validation; lower train.lr")
        if not trainer.parallel.is_main:
            return
        best = self.auto_class.from_pretrained(result.export_dir).to(trainer.parallel.device)
        test = self.examples["test"]
        config = trainer.config
        history = [
            {key: value for key, value in record.items() if key not in ("kind", "time")}
            for record in read_metrics(result.metrics_path)
            if record.get("kind") == "valid"
        ]
        self.record = {
            "task": self.task,
            "model_dir": str(self.model_dir),
            "model": self.model_config.summary() if hasattr(self.model_config, "summary") else self.model_config.model_type,
            "splits_note": self.splits_note,
            "examples": {name: len(rows) for name, rows in self.examples.items()},
            "train_config": config.to_dict(),
            "patience": self.patience,
            "steps": result.steps,
            "resumed_from_step": trainer.resume_from[1]["step"] if trainer.resume_from else 0,
            "best_step": result.best_step,
            "best_validation_score": result.best_value,
            "stopped_by": result.stopped_by,
            "stopped_early": result.stopped_by == "early_stop",
            "skipped_steps": result.skipped_steps,
            "rollbacks": result.rollbacks,
            "seconds_this_session": round(result.wall_seconds, 2),
            "history": history,
            "test_metrics": binary_metrics([example["labels"] for example in test], self.predict(best, self.tokenizer, test, config.batch_size)),
            "model_out": str(result.export_dir),
        }
        write_json(out_dir / "finetune.json", self.record)
        write_text(out_dir / "finetune.md", finetune_markdown(self.record))


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
    preset: str = DEFAULT_PRESET,
    progress: bool = True,
    **train_options,
) -> dict | None:
    """Fine-tune, keep the best validation model in ``out_dir/model``, score it on the test split.

    ``train_options`` are TrainConfig fields over the ``preset``'s (a name in ``presets/finetune/`` or a YAML
    file with a train section). An evaluation on the validation slice happens every ``eval_every`` steps (default:
    once per epoch) and is checkpointed; ``patience`` evaluations without a new best stop the run. With
    ``resume`` a run continues from ``out_dir``'s newest valid checkpoint, as ``kilolayer pretrain`` does.
    Returns the record in ``out_dir/finetune.json`` (None on ranks other than 0 under torchrun).
    """
    import os

    from ..presets import FINETUNE_PRESET_DIR, load_preset
    from ..train.loop import run_task
    from ..train.run_folder import read_saved_config
    from .model_folder import pick_device

    out_dir = Path(out_dir)
    check_out_dir(out_dir, Path(model_dir))
    recipe = load_preset(preset, FINETUNE_PRESET_DIR)
    if recipe["model"]:
        raise KiloError(f"fine-tuning preset {preset} has a model section; the model is MODEL_DIR's, keep train.* only")
    glue = GlueTask(Path(model_dir), task, data_dir, limit, patience)
    stored = (read_saved_config(out_dir) or {}).get("train") or {}
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = resolve_train_config(
        glue.model_config, len(glue.splits["train"]), epochs, recipe["train"], train_options, world_size, stored.get("decay_steps")
    )
    run_task(glue, config, out_dir, "auto" if resume else "never", progress, pick_device(device) if device else None)
    return getattr(glue, "record", None)
