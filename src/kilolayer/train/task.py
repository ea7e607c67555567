"""What a run trains: the ``Task`` the one ``Trainer`` is parameterised by, and pretraining's task.

A task gives the model, its tokenizer, indexed training batches (micro-batch ``i`` of a rank is a pure
function of ``i``, so resume and rollback replay exactly), a validation whose ``metric`` picks the best
evaluation, and what the run leaves behind. The Trainer does the rest the same way for every task:
run folder and resume, the train step, the stability guard and rollback, checkpoints, metrics.jsonl
and TensorBoard, signals and ``max_minutes``, the export and its model card.

Fine-tuning's task (GLUE sentence pairs) is ``kilolayer.eval.finetune.GlueTask``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..errors import KiloError
from ..modeling import PRETRAINING_CLASSES, KiloConfig
from ..presets import build_model_config
from .config import TrainConfig
from .metrics import METRICS, plot_loss_curve
from .validation import language_model_validation

LOSS_CURVE = "loss_curve.png"

MODEL_CARD_HEADS = {
    "gpt": ("AutoModelForCausalLM", "GPT (causal LM)"),
    "bert": ("AutoModelForMaskedLM", "BERT (masked LM)"),
    "encdec": ("AutoModelForSeq2SeqLM", "encoder-decoder (span-corruption LM)"),
}


def default_cache_dir() -> Path:
    """Where tokenizers and token shards are cached: ``$KILOLAYER_CACHE``, else ``~/.cache/kilolayer``."""
    return Path(os.environ.get("KILOLAYER_CACHE") or Path.home() / ".cache" / "kilolayer").expanduser()


def check_positions(model_config: KiloConfig, config: TrainConfig) -> None:
    """A learned position table must cover train.seq_len (rotary positions have no table)."""
    if model_config.position_embedding == "learned" and config.seq_len > model_config.max_positions:
        raise KiloError(
            f"train.seq_len {config.seq_len} exceeds model.max_positions {model_config.max_positions} (learned positions); "
            f"set --set model.max_positions={config.seq_len} or a train.seq_len of at most {model_config.max_positions}"
        )


def model_section(model_config: KiloConfig) -> dict:
    """Every KiloConfig field, defaults and derived constants (α, β) included: the model section of config.yaml."""
    return {name: getattr(model_config, name) for name in KiloConfig.__annotations__}


class Task:
    """The interface a task implements; the attributes are set by ``prepare``."""

    kind: str  # "pretrain" | "finetune": config.yaml records it, and a run folder of the other kind is refused
    metric: str  # the validation field that picks the best evaluation
    higher_is_better: bool
    keeps_best: bool  # export at every new best validation (fine-tuning) instead of the last weights at the end
    patience: int | None = None  # evaluations without a new best before the run stops early
    tokenizer = None
    model_config = None
    description: str = ""  # the data, for the banner and the model card

    def step_size(self, config: TrainConfig, world_size: int) -> str:
        """What one optimizer step trains on, in words."""
        return f"{config.batch_size * config.seq_len * config.grad_accum * world_size:,} tokens/step"

    def check(self, config: TrainConfig) -> None:
        """Input checks that need no data and no run folder (they run first)."""

    def writable_folders(self) -> list[tuple[Path, str]]:
        """Folders besides ``--out`` the run writes to: (path, name for the error message)."""
        return []

    def prepare(self, trainer) -> None:
        """Data, tokenizer and model config; ``trainer.folder`` and ``trainer.resume_from`` say what exists."""
        raise NotImplementedError

    def settings(self) -> dict:
        """The task's sections of config.yaml (besides ``kind`` and ``train``); compared on resume."""
        raise NotImplementedError

    def build_model(self, device: torch.device) -> torch.nn.Module:
        raise NotImplementedError

    def train_batches(self, config: TrainConfig, rank: int, world_size: int):
        """An object whose ``get_batch(index)`` is this rank's micro-batch ``index`` (CPU tensors)."""
        raise NotImplementedError

    def validate(self, trainer) -> dict:
        """The fields of a ``valid`` record, ``metric`` among them (every rank calls it)."""
        raise NotImplementedError

    def card(self, trainer) -> dict:
        """Model-card facts of this task: title, kind, auto_class and its own table rows."""
        raise NotImplementedError

    def finish(self, trainer, result) -> None:
        """After the run (export included): the task's own report files."""


class PretrainTask(Task):
    """Causal LM (GPT), masked LM (BERT) or span corruption (encoder-decoder) on a tokenized corpus."""

    kind = "pretrain"
    metric = "loss"
    higher_is_better = False
    keeps_best = False

    def __init__(self, model_input: dict, data=None):
        self.model_input = dict(model_input)
        self.data = data
        self.valid_batches = None

    def check(self, config: TrainConfig) -> None:
        check_positions(build_model_config(self.model_input), config)  # a model typo fails before any data preparation

    def writable_folders(self) -> list[tuple[Path, str]]:
        return [(default_cache_dir(), "the token cache (KILOLAYER_CACHE)")] if self.data is None else []

    def prepare(self, trainer) -> None:
        if self.data is None:
            from ..data import prepare_data

            arch = self.model_input.get("arch", "gpt")
            self.data = trainer.parallel.main_first(lambda: prepare_data(trainer.config, arch, default_cache_dir()))
        tokenizer = self.data.tokenizer
        token_ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        token_ids = {key: value for key, value in token_ids.items() if value is not None and key not in self.model_input}
        if "fused_loss" not in self.model_input:
            # A new run fuses the loss; a resumed one keeps the path it was started with (older runs stored False).
            token_ids["fused_loss"] = bool(trainer.folder.saved_setting(trainer.resume_from, "model", "fused_loss", True))
        self.model_config = build_model_config(self.model_input, vocab_size=len(tokenizer), **token_ids)
        self.tokenizer = tokenizer
        self.description = self.data.description
        config = trainer.config
        # A fixed validation set (seed 0, one process's order): comparable across seeds and world sizes.
        self.valid_batches = self.data.batches("valid", config.batch_size, config.seq_len, 0, 0, 1) if config.eval_every else None

    def settings(self) -> dict:
        return {"model": model_section(self.model_config)}

    def build_model(self, device: torch.device) -> torch.nn.Module:
        return PRETRAINING_CLASSES[self.model_config.arch](self.model_config).to(device)

    def train_batches(self, config: TrainConfig, rank: int, world_size: int):
        return self.data.batches("train", config.batch_size, config.seq_len, config.seed, rank, world_size)

    def validate(self, trainer) -> dict:
        return language_model_validation(trainer, self.valid_batches, self.model_config)

    def card(self, trainer) -> dict:
        config, model_config = trainer.config, self.model_config
        constants = ", ".join(f"{name} = {value:.4g}" for name, value in model_config.scheme_constants().items())
        valid = trainer.last_valid
        head, kind = MODEL_CARD_HEADS[model_config.arch]

        def loss(value):
            return "not measured" if value is None else f"{value:.4f}"

        return {
            "title": f"{config.preset or model_config.arch}: {model_config.num_layers}-layer {model_config.scheme}",
            "kind": kind,
            "auto_class": head,
            "table": {
                "preset": config.preset or "(custom config)",
                "scheme": model_config.scheme + (f" ({constants})" if constants else ""),
                "tokens seen": f"{trainer.tokens_seen():,}",
                "final train loss": loss(trainer.last_train_loss),
                "final valid loss": (
                    f"{valid['loss']:.4f} (perplexity {math.exp(min(valid['loss'], 700)):.1f})" if valid else "not measured"
                ),
                "best valid loss": loss(trainer.best_value),
            },
        }

    def finish(self, trainer, result) -> None:
        if trainer.parallel.is_main:
            out = trainer.folder.out_dir
            plot_loss_curve(out / METRICS, out / LOSS_CURVE, self.model_config.summary())
