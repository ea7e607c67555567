"""TrainConfig: every option of a pretraining run, one dataclass, saved resolved next to every run."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from ..errors import KiloError
from ..presets import check_fields


@dataclass
class TrainConfig:
    # data
    data: str | None = None  # corpus file or folder; None → $KILOLAYER_DATA/corpus, else the embedded default
    tokenizer: str = "train"  # "gpt2" | "bert-base-uncased" | an HF tokenizer folder | "train" (fit on the corpus)
    tokenizer_vocab_size: int = 4096  # size of a tokenizer trained on the corpus
    valid_fraction: float = 0.01  # share of documents held out for validation (deterministic)
    seq_len: int = 128
    batch_size: int = 8  # sequences per rank per micro-step
    grad_accum: int = 1
    mlm_probability: float = 0.15  # BERT: masked share (80 % [MASK], 10 % random, 10 % kept)
    # optimisation
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (with a checkpoint and export) after this wall time
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # final LR of cosine/linear decay, relative to lr
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | linear | inverse_sqrt | constant
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0  # None or 0 disables clipping
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    # loop, logs, checkpoints
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 10
    diagnostics_every: int = 50  # per-layer grad/update/activation norm summaries
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    # stability guard
    max_bad_steps: int = 3  # consecutive non-finite steps before rolling back to the last checkpoint
    rollback_lr_factor: float = 0.5
    divergence_factor: float = 2.0  # flag when loss > factor × running minimum
    on_nonfinite: str = "rollback"  # rollback (the guard) | stop (record the divergence and end: stability study)
    # scale-out (under torchrun)
    distributed: str = "ddp"  # ddp | fsdp

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a preset's train section: unknown keys and wrong types are KiloErrors."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        check_fields("train", values, set(fields))
        hints = typing.get_type_hints(cls)
        coerced = {key: _coerce(key, value, hints[key]) for key, value in values.items()}
        return cls(**coerced)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(key: str, value, hint):
    """Convert a YAML/CLI value to the field's type (YAML 1.1 reads 1e-3 as a string)."""
    allowed = [arg for arg in typing.get_args(hint) if arg is not type(None)] or [hint]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise KiloError(f"train key {key!r} cannot be null")
    target = allowed[0]
    if target is bool:
        if isinstance(value, bool):
            return value
        raise KiloError(f"train key {key!r} must be true or false, got {value!r}")
    try:
        return target(value)
    except (TypeError, ValueError):
        raise KiloError(f"train key {key!r} must be a {target.__name__}, got {value!r}") from None
