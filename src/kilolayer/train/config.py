"""TrainConfig: every option of a pretraining run, one dataclass, saved resolved next to every run."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from ..errors import KiloError
from ..presets import check_fields

SCHEDULES = ("cosine", "linear", "inverse_sqrt", "constant")
PRECISIONS = ("fp32", "bf16")
ON_NONFINITE = ("rollback", "stop")
DISTRIBUTED = ("ddp", "fsdp")

# Keys that may change when a run is resumed: how long it runs, how often it logs and where it came from,
# never what a step computes.
RESUMABLE_KEYS = frozenset(
    {
        "preset",
        "max_steps",
        "max_minutes",
        "log_every",
        "eval_every",
        "eval_batches",
        "diagnostics_every",
        "checkpoint_every",
        "keep_checkpoints",
        "max_rollbacks",
        "export",
    }
)


@dataclass
class TrainConfig:
    # data
    data: str | None = None  # corpus file or folder; None → $KILOLAYER_DATA/corpus, else the embedded default
    tokenizer: str = "train"  # "gpt2" | "bert-base-uncased" | an HF tokenizer folder | "train" (fit on the corpus)
    tokenizer_vocab_size: int = 4096  # size of a tokenizer trained on the corpus
    valid_fraction: float = 0.01  # share of documents held out for validation (deterministic); 0 only with eval_every 0
    seq_len: int = 128
    batch_size: int = 8  # sequences per rank per micro-step
    grad_accum: int = 1
    mlm_probability: float = 0.15  # BERT: masked share (80 % [MASK], 10 % random, 10 % kept)
    # optimisation
    max_steps: int = 1000
    max_minutes: float | None = None  # stop (then validate, checkpoint, export) before a step would end past this wall time of the invocation
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # final LR of cosine/linear decay, relative to lr
    warmup_steps: int = 100
    # The step where cosine/linear decay reaches its floor. None: the max_steps of the run's first invocation,
    # stored in config.yaml, so a run resumed with a larger max_steps continues the same schedule (at the floor
    # past the horizon) instead of jumping back up. Set it above max_steps to plan a run you will extend.
    decay_steps: int | None = None
    schedule: str = "cosine"  # cosine | linear | inverse_sqrt | constant
    weight_decay: float = 0.01  # on matrices and embeddings only (not biases, norms, gates)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0  # None or 0 disables clipping
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile each block
    seed: int = 0
    # loop, logs, checkpoints (an *_every of 0 turns that off)
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 10
    diagnostics_every: int = 50  # per-layer grad/update/activation norm summaries
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    export: bool = True  # write the HF model folder at the end
    # stability guard
    max_bad_steps: int = 3  # consecutive non-finite steps before rolling back to the last checkpoint
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 5  # then the run stops as diverged
    divergence_factor: float = 2.0  # flag when loss > factor × running minimum
    on_nonfinite: str = "rollback"  # rollback (the guard) | stop (record the divergence and end: stability study)
    # scale-out (under torchrun)
    distributed: str = "ddp"  # ddp | fsdp
    # provenance
    preset: str | None = None  # the preset this config started from (config.yaml and the model card say it)

    def __post_init__(self):
        self._validate()

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a preset's train section: unknown keys, wrong types and invalid values are KiloErrors."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        check_fields("train", values, set(fields))
        hints = typing.get_type_hints(cls)
        coerced = {key: _coerce(key, value, hints[key]) for key, value in values.items()}
        return cls(**coerced)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _validate(self) -> None:
        choices = {
            "schedule": SCHEDULES,
            "precision": PRECISIONS,
            "on_nonfinite": ON_NONFINITE,
            "distributed": DISTRIBUTED,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise KiloError(f"train key {key!r} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        at_least = {
            "seq_len": 2, "batch_size": 1, "grad_accum": 1, "max_steps": 1, "log_every": 1, "eval_batches": 1,
            "keep_checkpoints": 1, "max_bad_steps": 1, "tokenizer_vocab_size": 1,
            "warmup_steps": 0, "eval_every": 0, "diagnostics_every": 0, "checkpoint_every": 0, "max_rollbacks": 0,
        }  # fmt: skip
        for key, low in at_least.items():
            if getattr(self, key) < low:
                raise KiloError(f"train key {key!r} must be ≥ {low}, got {getattr(self, key)!r}")
        positive = ("lr", "adam_eps", "divergence_factor")
        for key in positive:
            if not getattr(self, key) > 0:
                raise KiloError(f"train key {key!r} must be > 0, got {getattr(self, key)!r}")
        fractions = ("mlm_probability", "adam_beta1", "adam_beta2", "rollback_lr_factor")
        for key in fractions:
            if not 0 < getattr(self, key) < 1:
                raise KiloError(f"train key {key!r} must be in (0, 1), got {getattr(self, key)!r}")
        if not 0 <= self.valid_fraction < 1:
            raise KiloError(f"train key 'valid_fraction' must be in [0, 1), got {self.valid_fraction!r}")
        if self.valid_fraction == 0 and self.eval_every:
            raise KiloError(
                f"train.valid_fraction=0 holds out no validation text, but train.eval_every is {self.eval_every}; "
                "set train.eval_every=0 to train without validation, or a valid_fraction such as 0.01"
            )
        if not 0 <= self.min_lr_ratio <= 1:
            raise KiloError(f"train key 'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.weight_decay < 0 or (self.grad_clip or 0) < 0:
            raise KiloError("train keys 'weight_decay' and 'grad_clip' must be ≥ 0")
        if self.decay_steps is not None and self.decay_steps < 1:
            raise KiloError(f"train key 'decay_steps' must be ≥ 1 or null, got {self.decay_steps!r}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise KiloError(f"train key 'max_minutes' must be > 0 or null, got {self.max_minutes!r}")


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
    if target is int and isinstance(value, float) and not value.is_integer():
        raise KiloError(f"train key {key!r} must be an integer, got {value!r}")
    if target is not str and isinstance(value, bool):
        raise KiloError(f"train key {key!r} must be a {target.__name__}, got {value!r}")
    try:
        return target(value)
    except (TypeError, ValueError):
        raise KiloError(f"train key {key!r} must be a {target.__name__}, got {value!r}") from None
