"""The pretraining loop: ``train(config, out_dir)`` builds the model and data, trains, checkpoints and exports.

One optimizer step = ``grad_accum`` micro-batches per rank, loss averaged, one AdamW update at
LR = lr × schedule(step) × guard scale. Everything a step depends on — weights, optimizer moments,
RNG states, the micro-batch index (batches are a pure function of it), the guard — is in the
checkpoint, so a run killed at any point and resumed continues bitwise identically on CPU.

Files in ``out_dir``: ``config.yaml`` (the full resolved config), ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/step-…/``, ``loss_curve.png`` and ``model/`` (the exported HF folder with a model card).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .. import __version__, atomic
from ..errors import KiloError
from ..paths import check_writable_folder
from ..modeling import PRETRAINING_CLASSES, KiloConfig
from ..presets import build_model_config
from . import checkpoint, distributed
from .config import RESUMABLE_KEYS, TrainConfig
from .export import export_model, materialize, model_card
from .faults import Faults
from .diagnostics import LayerDiagnostics, context_shuffled, usage
from .guard import StabilityGuard
from .metrics import METRICS, MetricsLog, plot_loss_curve, read_metrics
from .process import ProcessSettings
from .schedule import learning_rate

CONFIG_FILE = "config.yaml"
EXPORT_DIR = "model"
LOSS_CURVE = "loss_curve.png"


@dataclass
class TrainResult:
    steps: int  # optimizer steps completed (the run's step counter at the end)
    final_train_loss: float | None  # mean train loss over the last logged window
    final_valid_loss: float | None
    best_valid_loss: float | None
    diverged: bool  # stopped on a non-finite step
    diverged_at: int | None
    flagged_at: int | None  # the divergence flag was up at the end, raised at this step (a warning; the model is exported)
    skipped_steps: int
    rollbacks: int
    wall_seconds: float  # this invocation, setup included
    tokens_per_second: float  # trained tokens / time spent in training steps (all ranks)
    export_dir: Path | None
    metrics_path: Path
    checkpoint: Path | None  # the newest checkpoint, the one a rerun continues from (None: checkpoints are off)
    stopped_by: str = "max_steps"  # max_steps | max_minutes | signal | nonfinite


def default_cache_dir() -> Path:
    """Where tokenizers and token shards are cached: ``$KILOLAYER_CACHE``, else ``~/.cache/kilolayer``."""
    return Path(os.environ.get("KILOLAYER_CACHE") or Path.home() / ".cache" / "kilolayer").expanduser()


def train(config: dict, out_dir: Path, resume: str = "auto", progress: bool = True, data=None) -> TrainResult:
    """Train the model of ``config`` ({"model": …, "train": …}, as ``resolve_config`` returns) into ``out_dir``.

    resume: "auto" continues from the newest valid checkpoint in ``out_dir`` (or starts when there is
    none), "never" refuses an ``out_dir`` that already holds a run, a path resumes that checkpoint.
    data: a prepared data object (``.tokenizer``, ``.description``, ``.batches(...)``); by default
    ``kilolayer.data.prepare_data`` builds it from the train section.
    """
    trainer = Trainer(config, Path(out_dir), resume, progress, data)
    try:
        return trainer.run()
    finally:
        trainer.close()


def model_section(model_config: KiloConfig) -> dict:
    """Every KiloConfig field, defaults and derived constants (α, β) included: the model half of config.yaml."""
    return {name: getattr(model_config, name) for name in KiloConfig.__annotations__}


def first_difference(saved: dict, current: dict) -> str | None:
    """The first setting (section.key=value) that differs between two resolved configs, resumable keys aside.

    A key the saved config lacks is a setting added to kilolayer after the run started: not a difference.
    """
    for section in ("model", "train"):
        old, new = saved.get(section) or {}, current.get(section) or {}
        for key in sorted(old):
            if section == "train" and key in RESUMABLE_KEYS:
                continue
            if old.get(key) != new.get(key):
                return f"{section}.{key}={old.get(key)!r} (this config: {new.get(key)!r})"
    return None


def build_optimizer(model: torch.nn.Module, config: TrainConfig, sharded: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only; fused kernels, or foreach over FSDP2 shards."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    kernel = {"foreach": True} if sharded else {"fused": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, **kernel)


def check_positions(model_config: KiloConfig, config: TrainConfig) -> None:
    """A learned position table must cover train.seq_len (rotary positions have no table)."""
    if model_config.position_embedding == "learned" and config.seq_len > model_config.max_positions:
        raise KiloError(
            f"train.seq_len {config.seq_len} exceeds model.max_positions {model_config.max_positions} (learned positions); "
            f"set --set model.max_positions={config.seq_len} or a train.seq_len of at most {model_config.max_positions}"
        )


def final_validation_seconds(trainer) -> float:
    """What the end-of-run validation will cost: the last one's measured time, else an estimate from the step time.

    A validation batch is two forward passes (own and shuffled context); measured on the loaded 2-core CPU at
    1000 x 64 they took one training step together (239 s for 4 batches at 55-64 s per step).
    """
    if not trainer.config.eval_every:
        return 0.0
    if trainer.validation_seconds is not None:
        return trainer.validation_seconds
    return trainer.config.eval_batches * trainer.last_step_seconds


class Trainer:
    """One run: set up in ``__init__`` (all input checks first, nothing written on bad input), then ``run()``."""

    def __init__(self, config: dict, out_dir: Path, resume: str, progress: bool, data):
        self.started = time.monotonic()
        self.config = TrainConfig.from_dict(config.get("train") or {})
        model_input = dict(config.get("model") or {})
        check_positions(build_model_config(model_input), self.config)  # a model typo fails before any data preparation
        self.parallel = distributed.setup(self.config.distributed)
        self.process_settings = ProcessSettings(self.parallel.device)
        self.process_settings.apply()
        try:
            self._build(model_input, out_dir, resume, progress, data)
        except BaseException:
            self.process_settings.restore()
            self.parallel.teardown()
            raise

    def _build(self, model_input: dict, out_dir: Path, resume: str, progress: bool, data) -> None:
        self.out_dir = out_dir
        self.checkpoint_root = out_dir / "checkpoints"
        self.progress = progress and self.parallel.is_main
        self.warnings: list[str] = []
        self.warned_idle_blocks = False
        self.faults = Faults()
        check_writable_folder(out_dir, "--out")
        if data is None:
            check_writable_folder(default_cache_dir(), "the token cache (KILOLAYER_CACHE)")
        self.resume_from = self._find_resume(resume)

        if data is None:
            from ..data import prepare_data

            data = self.parallel.main_first(lambda: prepare_data(self.config, model_input.get("arch", "gpt"), default_cache_dir()))
        self.data = data
        tokenizer = data.tokenizer
        token_ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
        token_ids = {key: value for key, value in token_ids.items() if value is not None and key not in model_input}
        training_defaults = {} if "fused_loss" in model_input else {"fused_loss": self._saved_fused_loss()}
        self.model_config = build_model_config(model_input, vocab_size=len(tokenizer), **token_ids, **training_defaults)
        if self.config.decay_steps is None:
            self.config.decay_steps = self._stored_horizon() or self.config.max_steps
        self.resolved = {"model": model_section(self.model_config), "train": self.config.to_dict()}
        self._check_same_run()

        self._seed_everything(self.config.seed)
        self.model_class = PRETRAINING_CLASSES[self.model_config.arch]
        model = self.model_class(self.model_config).to(self.parallel.device)
        if self.config.activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if self.config.compile:
            for block in model.model.layers:
                block.compile()
        model.train()
        self.model = model
        self.wrapped = self.parallel.wrap(model)
        self.optimizer = build_optimizer(model, self.config, self.parallel.sharded)
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.diagnostics = LayerDiagnostics(model, self.parallel)
        self._seed_everything(self.config.seed + self.parallel.rank)  # dropout streams differ per rank

        world = self.parallel.world_size
        self.train_batches = data.batches("train", self.config.batch_size, self.config.seq_len, self.config.seed, self.parallel.rank, world)
        # A fixed validation set (seed 0, one process's order): comparable across seeds and world sizes.
        self.valid_batches = data.batches("valid", self.config.batch_size, self.config.seq_len, 0, 0, 1) if self.config.eval_every else None
        self.tokens_per_micro_batch = self.config.batch_size * self.config.seq_len

        self.step = 0
        self.next_batch = 0  # this rank's micro-batch index
        self.guard = StabilityGuard(self.config)
        self.saved_at: tuple[int, int] | None = None
        self.last_checkpoint: Path | None = self.resume_from[0] if self.resume_from else None
        if self.resume_from is not None:
            self._load(*self.resume_from, restore_rng=True)
            self.saved_at = (self.step, self.next_batch)
        self._write_config()  # every check has passed: the run folder is created now, not before
        self.metrics = MetricsLog(out_dir, self.parallel.is_main, self.step if self.resume_from else None)

        self.window = {"losses": [], "grad_norms": [], "seconds": 0.0, "tokens": 0}
        self.train_seconds = 0.0
        self.last_step_seconds = 0.0  # to stop before a step that would overrun max_minutes
        self.validation_seconds: float | None = None  # the last validation's duration (max_minutes keeps room for one)
        self.session_steps = 0  # optimizer steps taken by this invocation
        self.trained_tokens = 0
        self.last_train_loss: float | None = None
        self.last_valid: tuple[int, float] | None = None
        self.best_valid_loss: float | None = None
        self.stop_signal: int | None = None
        self.previous_handlers: dict = {}
        self.bar = None

    # ------------------------------------------------------------------ setup checks

    def _find_resume(self, resume: str) -> tuple[Path, dict] | None:
        """The checkpoint to resume from, after every check on ``out_dir`` and ``resume`` (KiloError on bad input)."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise KiloError(f"--out {out} is a file; give a folder")
        holds_run = any((out / name).exists() for name in (CONFIG_FILE, METRICS, "checkpoints"))
        foreign = out.is_dir() and any(out.iterdir()) and not holds_run
        if foreign:
            raise KiloError(f"--out {out} exists, is not empty and holds no kilolayer run; choose a new or empty folder")
        if resume == "never":
            if holds_run:
                raise KiloError(f"--out {out} already holds a run; continue it with --resume auto, or choose a new --out")
            return None
        if resume == "auto":
            if not holds_run:
                return None
            if self.parallel.is_main:
                for target in atomic.leftover_targets(out):  # config.yaml, metrics.jsonl, model/ swapped when killed
                    atomic.recover(target)
                checkpoint.remove_torn_writes(self.checkpoint_root)
            self.parallel.barrier()
            found = checkpoint.latest_valid(self.checkpoint_root, warn=self._warn)
            trained = [r["step"] for r in read_metrics(out / METRICS) if r.get("kind") == "train"]
            if found is None and trained:
                raise KiloError(
                    f"--out {out} holds a run that trained {max(trained)} steps but has no checkpoint to continue from "
                    f"(train.checkpoint_every=0); choose a new --out, or delete {out} to start over"
                )
            return found
        folder = Path(resume).expanduser()
        if not folder.is_dir():
            raise KiloError(f"--resume {resume}: no such checkpoint folder; use auto, never or a checkpoints/step-… folder")
        meta = checkpoint.read_meta(folder)
        newer = [path for path in checkpoint.list_checkpoints(self.checkpoint_root) if path.name > folder.name]
        if newer:
            raise KiloError(
                f"--out {out} has checkpoints newer than {folder.name} ({newer[0].name}); to branch from an older "
                f"checkpoint choose a new --out"
            )
        return folder, meta

    def _stored_horizon(self) -> int | None:
        """The decay horizon an existing run was started with: its decay_steps, else (runs from before decay_steps
        existed) its max_steps; None for a new run."""
        saved = self._saved_configs()
        train = (saved[0][1].get("train") or {}) if saved else {}
        return train.get("decay_steps") or train.get("max_steps")

    def _saved_fused_loss(self) -> bool:
        """The loss path a resumed run was trained with (runs from before the switch stored False); a new run fuses.
        The export turns it off: exported models give logits in training steps too."""
        saved = self._saved_configs()
        return bool((saved[0][1].get("model") or {}).get("fused_loss", True)) if saved else True

    def _saved_configs(self) -> list[tuple[Path, dict]]:
        """(source, resolved config) of the existing run: its config.yaml and the checkpoint it resumes from."""
        saved = []
        if (self.out_dir / CONFIG_FILE).is_file():
            try:
                saved.append((self.out_dir / CONFIG_FILE, yaml.safe_load((self.out_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}))
            except (OSError, yaml.YAMLError) as error:
                raise KiloError(f"{self.out_dir / CONFIG_FILE} is unreadable ({type(error).__name__}); choose a new --out") from None
        if self.resume_from is not None:
            saved.append((self.resume_from[0], self.resume_from[1].get("config") or {}))
        return saved

    def _check_same_run(self) -> None:
        """An existing run (config.yaml) or the resumed checkpoint must have been trained with this config."""
        for source, previous in self._saved_configs():
            difference = first_difference(previous, self.resolved)
            if difference:
                raise KiloError(
                    f"{source} was trained with {difference}; resume with the same settings, or choose a new --out for a new run"
                )

    def _write_config(self) -> None:
        if self.parallel.is_main:
            atomic.write_text(self.out_dir / CONFIG_FILE, yaml.safe_dump(self.resolved, sort_keys=False))
        self.parallel.barrier()

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.parallel.is_main:
            print(f"kilolayer pretrain: warning: {message}", file=sys.stderr)

    @staticmethod
    def _seed_everything(seed: int) -> None:
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    # ------------------------------------------------------------------ checkpoints

    def _save(self) -> None:
        if self.saved_at == (self.step, self.next_batch) or not self.config.checkpoint_every:
            return
        state = {
            "micro_batches": self.next_batch * self.parallel.world_size,
            "guard": self.guard.state_dict(),
            "config": self.resolved,
        }
        folder = checkpoint.save_checkpoint(
            self.checkpoint_root,
            self.step,
            parallel=self.parallel,
            model=self.wrapped,
            optimizer=self.optimizer,
            state=state,
            keep=self.config.keep_checkpoints,
            faults=self.faults,
        )
        self.saved_at = (self.step, self.next_batch)
        self.last_checkpoint = folder
        self.metrics.write("event", event="checkpoint", step=self.step, path=str(folder))

    def _load(self, folder: Path, meta: dict, restore_rng: bool) -> None:
        checkpoint.load_checkpoint(folder, meta, parallel=self.parallel, model=self.wrapped, optimizer=self.optimizer, restore_rng=restore_rng)
        self.step = meta["step"]
        if restore_rng:  # a resume; a rollback keeps moving forward through the data and keeps the guard's counts
            world = self.parallel.world_size
            if meta["world_size"] != world:
                self._warn(
                    f"checkpoint {folder.name} was written by {meta['world_size']} rank(s), this run has {world}: "
                    "the data order and dropout draws continue only approximately"
                )
            self.next_batch = meta["micro_batches"] // world
            self.guard = StabilityGuard(self.config, StabilityGuard.state_from(meta["guard"]))

    def _rollback(self) -> str:
        """Back to the newest valid checkpoint with a lower LR; "stop" when there is none to go back to."""
        found = checkpoint.latest_valid(self.checkpoint_root, warn=self._warn) if self.config.checkpoint_every else None
        if found is None:
            self.guard.state.diverged_at = self.step
            self.metrics.write("event", event="stopped_nonfinite", step=self.step, reason="no checkpoint to roll back to")
            return "stop"
        from_step = self.step
        self._load(*found, restore_rng=False)
        self.guard.rolled_back()
        self.saved_at = None
        self.metrics.write(
            "event", event="rollback", step=from_step, to_step=self.step, lr_scale=self.guard.state.lr_scale, checkpoint=str(found[0])
        )
        self._reset_window()
        if self.bar is not None:
            self.bar.n = self.step
            self.bar.refresh()
        return "rolled_back"

    # ------------------------------------------------------------------ one step

    def _autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.parallel.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _batch(self, batches, index: int) -> dict[str, torch.Tensor]:
        return {key: value.to(self.parallel.device, non_blocking=True) for key, value in batches.get_batch(index).items()}

    def _activation_rms(self, output) -> torch.Tensor:
        """Per-block RMS of the residual stream; an encoder-decoder's blocks are the encoder's, then the decoder's."""
        if not self.model_config.is_encoder_decoder:
            return LayerDiagnostics.activation_rms(output.hidden_states)
        stacks = (output.encoder_hidden_states, output.decoder_hidden_states)
        return torch.cat([LayerDiagnostics.activation_rms(hidden_states) for hidden_states in stacks])

    def _train_step(self) -> str:
        """Forward/backward over the micro-batches, the guard's verdict, and the update if it says "step"."""
        config = self.config
        number = self.step + 1  # the step being taken, 1-based as in the logs
        lr = learning_rate(config, self.step, self.guard.state.lr_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        diagnose = bool(config.diagnostics_every) and number % config.diagnostics_every == 0
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=self.parallel.device)
        activations = None
        for micro in range(config.grad_accum):
            batch = self._batch(self.train_batches, self.next_batch)
            self.next_batch += 1
            with self.parallel.gradient_sync(self.wrapped, sync=micro == config.grad_accum - 1):
                with self._autocast():
                    output = self.wrapped(**batch, output_hidden_states=diagnose and micro == 0)
                if diagnose and micro == 0:
                    activations = self._activation_rms(output)
                loss = output.loss / config.grad_accum
                loss.backward()
            loss_sum += loss.detach()
            del output, loss
        self.faults.poison_gradients(number, self.parameters)
        layer_grads = self.diagnostics.grad_norms() if diagnose else None
        if config.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, config.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])
        loss_sum = self.parallel.all_reduce_sum(loss_sum) / self.parallel.world_size
        loss_value, grad_value = torch.stack([loss_sum.float(), distributed.full_tensor(grad_norm).float()]).tolist()
        verdict, events = self.guard.check(number, loss_value, grad_value)
        for event in events:
            self.metrics.write("event", **event)
        if verdict != "step":
            self.optimizer.zero_grad(set_to_none=True)
            return verdict
        before = self.diagnostics.snapshot() if diagnose else None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = number
        seconds = time.perf_counter() - started
        tokens = self.tokens_per_micro_batch * config.grad_accum * self.parallel.world_size
        self.train_seconds += seconds
        self.last_step_seconds = seconds
        self.session_steps += 1
        self.trained_tokens += tokens
        window = self.window
        window["losses"].append(loss_value)
        window["grad_norms"].append(grad_value)
        window["seconds"] += seconds
        window["tokens"] += tokens
        window["lr"] = lr
        if diagnose:
            self._write_diagnostics(number, layer_grads, before, activations)
        return "step"

    def _write_diagnostics(self, number: int, layer_grads: torch.Tensor, before: list[torch.Tensor], activations) -> None:
        """Per-block norms (summaries in ``diagnostics`` records, the full profile in ``layers`` records) and their
        usage counts; warns once when most blocks no longer get a gradient Adam can see (``diagnostics.py``)."""
        diagnostics = self.diagnostics
        grad_rms = diagnostics.grad_rms(layer_grads)
        update_norms = diagnostics.update_norms(before)
        update_ratio = update_norms / diagnostics.parameter_norms().clamp_min(torch.finfo(torch.float64).tiny)
        per_layer = {
            "grad_norm": layer_grads.tolist(),
            "grad_rms": grad_rms.tolist(),
            "update_norm": update_norms.tolist(),
            "update_ratio": update_ratio.tolist(),
            "activation_rms": activations.tolist(),
            "norm_gain": diagnostics.norm_gain_means(),
        }
        self.metrics.write_diagnostics(number, per_layer, LayerDiagnostics.summarize)
        layer_usage = usage(per_layer["grad_norm"], per_layer["grad_rms"], per_layer["update_ratio"], self.config.adam_eps)
        self.metrics.write("layers", step=number, usage=layer_usage.to_dict(), **per_layer)
        if layer_usage.live_fraction < 0.5 and not self.warned_idle_blocks:
            self.warned_idle_blocks = True
            self._warn(
                f"step {number}: {layer_usage.blocks - layer_usage.live_blocks} of {layer_usage.blocks} blocks get a gradient "
                f"below Adam's eps ({self.config.adam_eps:g}): they no longer learn from the data"
            )

    def _reset_window(self) -> None:
        self.window = {"losses": [], "grad_norms": [], "seconds": 0.0, "tokens": 0}

    def _log_train(self) -> None:
        window = self.window
        if not window["losses"]:
            return
        count = len(window["losses"])
        self.last_train_loss = sum(window["losses"]) / count
        self.metrics.write(
            "train",
            step=self.step,
            loss=self.last_train_loss,
            lr=window["lr"],
            grad_norm=sum(window["grad_norms"]) / count,
            tokens_per_s=window["tokens"] / window["seconds"],
            step_seconds=window["seconds"] / count,
            tokens=self._tokens_seen(),
        )
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"loss {self.last_train_loss:.3f}, {window['tokens'] / window['seconds']:,.0f} tok/s, lr {window['lr']:.2e}", refresh=False
            )
        self._reset_window()

    def _tokens_seen(self) -> int:
        return self.next_batch * self.parallel.world_size * self.tokens_per_micro_batch

    @torch.no_grad()
    def _validate(self) -> None:
        """Token-weighted mean loss over the first ``eval_batches`` validation batches (rounded up to a multiple of
        the world size, so every FSDP rank runs as many forwards), and its perplexity."""
        started = time.monotonic()
        world, rank = self.parallel.world_size, self.parallel.rank
        batches = math.ceil(self.config.eval_batches / world) * world
        totals = torch.zeros(3, dtype=torch.float64, device=self.parallel.device)
        causal = self.model_config.is_causal
        rolls_every_input = self.model_config.arch != "bert"  # a GPT's or an encoder's input is all context
        self.model.eval()
        for index in range(rank, batches, world):
            batch = self._batch(self.valid_batches, index)
            with self._autocast():
                loss = self.wrapped(**batch, use_cache=False).loss  # scoring: no KV cache of every layer
                shuffled_loss = self.wrapped(**context_shuffled(batch, rolls_every_input), use_cache=False).loss
            labels = batch["labels"][:, 1:] if causal else batch["labels"]
            count = (labels != -100).sum()
            totals += torch.stack([loss.double() * count, shuffled_loss.double() * count, count.double()])
        self.model.train()
        loss_sum, shuffled_sum, count = self.parallel.all_reduce_sum(totals).tolist()
        loss = loss_sum / count
        context_gain = shuffled_sum / count - loss
        self.last_valid = (self.step, loss)
        if math.isfinite(loss):
            self.best_valid_loss = loss if self.best_valid_loss is None else min(self.best_valid_loss, loss)
        self.metrics.write(
            "valid", step=self.step, loss=loss, ppl=math.exp(min(loss, 700.0)), context_gain=context_gain, batches=batches
        )
        self.validation_seconds = time.monotonic() - started

    # ------------------------------------------------------------------ the run

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.stop_signal = signum
        if self.bar is not None:
            self.bar.write(f"kilolayer pretrain: {signal.Signals(signum).name}: saving a checkpoint after this step, then exiting")

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _stop_reason(self) -> str | None:
        # Stop before a step whose end, plus the final validation, would pass max_minutes (a 1000-layer CPU step
        # takes seconds to minutes, and the final validation can take several steps' time).
        projected = time.monotonic() - self.started + self.last_step_seconds + final_validation_seconds(self)
        out_of_time = self.config.max_minutes is not None and projected > 60 * self.config.max_minutes
        local = "signal" if self.stop_signal is not None else "max_minutes" if out_of_time else None
        if self.parallel.world_size == 1:
            return local
        stop = self.parallel.agree(local is not None)
        return (local or "signal") if stop else None

    def _announce(self) -> None:
        if not self.parallel.is_main:
            return
        config = self.config
        parameters = sum(p.numel() for p in self.model.parameters())
        tokens_per_step = self.tokens_per_micro_batch * config.grad_accum * self.parallel.world_size
        self.metrics.write(
            "event",
            event="resume" if self.resume_from else "start",
            step=self.step,
            model=self.model_config.summary(),
            parameters=parameters,
            data=self.data.description,
            tokens_per_step=tokens_per_step,
            world_size=self.parallel.world_size,
            strategy=self.parallel.strategy,
            device=str(self.parallel.device),
            threads=self.process_settings.describe(),
            warnings=self.warnings,
        )
        if self.progress:
            resumed = f", resumed from step {self.step}" if self.resume_from else ""
            print(
                f"kilolayer pretrain: {self.model_config.summary()}, {parameters / 1e6:.1f}M parameters\n"
                f"  data: {self.data.description}\n"
                f"  {tokens_per_step:,} tokens/step on {self.parallel.world_size} × {self.parallel.device.type}"
                f" ({self.parallel.strategy}), out: {self.out_dir}{resumed}\n"
                f"  threads: {self.process_settings.describe()}",
                file=sys.stderr,
            )

    def run(self) -> TrainResult:
        from tqdm.auto import tqdm

        config = self.config
        self._install_signal_handlers()
        self._announce()
        if self.resume_from is None:
            self._save()  # step 0: the first "last good" checkpoint to roll back to
        self.bar = tqdm(
            total=config.max_steps,
            initial=self.step,
            desc="pretrain",
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        stopped_by = "max_steps"
        while self.step < config.max_steps:
            reason = self._stop_reason()
            if reason:
                stopped_by = reason
                break
            verdict = self._train_step()
            if verdict == "rollback":
                verdict = self._rollback()
            if verdict == "stop":
                stopped_by = "nonfinite"
                break
            if verdict != "step":
                continue
            self.bar.update(1)
            if self.step % config.log_every == 0:
                self._log_train()
            if config.eval_every and self.step % config.eval_every == 0:
                self._validate()
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self._save()
        self.bar.close()
        return self._finish(stopped_by)

    def _finish(self, stopped_by: str) -> TrainResult:
        """Log, validate, checkpoint, export and plot at the end (a signal gets only the checkpoint)."""
        config = self.config
        self._log_train()
        interrupted = stopped_by == "signal"
        if config.eval_every and not interrupted and (self.last_valid is None or self.last_valid[0] != self.step):
            self._validate()
        self._save()
        export_dir = None
        if config.export and not interrupted and not self.guard.diverged:  # the divergence flag never blocks it
            export_dir = self._export()
        wall = time.monotonic() - self.started
        result = TrainResult(
            steps=self.step,
            final_train_loss=self.last_train_loss,
            final_valid_loss=self.last_valid[1] if self.last_valid else None,
            best_valid_loss=self.best_valid_loss,
            diverged=self.guard.diverged,
            diverged_at=self.guard.state.diverged_at,
            flagged_at=self.guard.state.flagged_at,
            skipped_steps=self.guard.state.skipped_steps,
            rollbacks=self.guard.state.rollbacks,
            wall_seconds=wall,
            tokens_per_second=self.trained_tokens / self.train_seconds if self.train_seconds else 0.0,
            export_dir=export_dir,
            metrics_path=self.out_dir / METRICS,
            checkpoint=self.last_checkpoint,
            stopped_by=stopped_by,
        )
        summary = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(result).items()}
        self.metrics.write("event", event="stop", step=self.step, **summary)
        if self.parallel.is_main:
            plot_loss_curve(self.out_dir / METRICS, self.out_dir / LOSS_CURVE, self.model_config.summary())
        return result

    def _export(self) -> Path | None:
        """The HF folder ``out_dir/model`` (collective under FSDP, where the weights are gathered first)."""
        model = self.model
        if self.parallel.sharded:
            state = distributed.full_model_state(self.wrapped)
            model = materialize(self.model_class, self.model_config, state) if self.parallel.is_main else None
        folder = self.out_dir / EXPORT_DIR
        if self.parallel.is_main:
            export_model(model, self.data.tokenizer, folder, model_card(self._card_facts(folder)))
            self.metrics.write("event", event="export", step=self.step, path=str(folder))
        self.parallel.barrier()
        return folder

    def _card_facts(self, folder: Path) -> dict:
        config, model_config = self.config, self.model_config
        tokens_per_step = self.tokens_per_micro_batch * config.grad_accum * self.parallel.world_size
        constants = ", ".join(f"{name} = {value:.4g}" for name, value in model_config.scheme_constants().items())
        valid = f"{self.last_valid[1]:.4f} (perplexity {math.exp(min(self.last_valid[1], 700)):.1f})" if self.last_valid else "not measured"
        table = {
            "preset": config.preset or "(custom config)",
            "scheme": model_config.scheme + (f" ({constants})" if constants else ""),
            "optimizer steps": f"{self.step:,} (max_steps {config.max_steps:,})",
            "tokens seen": f"{self._tokens_seen():,}",
            "batch": (
                f"{config.batch_size} × {config.seq_len} tokens × {config.grad_accum} accumulation × "
                f"{self.parallel.world_size} rank(s) = {tokens_per_step:,} tokens/step"
            ),
            "optimizer": (
                f"AdamW, lr {config.lr:g}, betas ({config.adam_beta1}, {config.adam_beta2}), eps {config.adam_eps:g}, "
                f"weight decay {config.weight_decay:g}"
            ),
            "schedule": (
                f"{config.warmup_steps} warmup steps, then {config.schedule} decay until step {config.decay_steps} "
                f"(min_lr_ratio {config.min_lr_ratio:g})"
            ),
            "precision": config.precision + (", activation checkpointing" if config.activation_checkpointing else ""),
            "final train loss": f"{self.last_train_loss:.4f}" if self.last_train_loss is not None else "not measured",
            "final valid loss": valid,
            "best valid loss": f"{self.best_valid_loss:.4f}" if self.best_valid_loss is not None else "not measured",
            "stability guard": f"{self.guard.state.skipped_steps} skipped steps, {self.guard.state.rollbacks} rollbacks"
            + (
                f"; divergence flag up since step {self.guard.state.flagged_at} (smoothed loss above "
                f"{config.divergence_factor:g} × its best)"
                if self.guard.state.flagged_at is not None
                else ""
            ),
            "hardware": f"{self.parallel.world_size} × {self.parallel.device.type} ({platform.machine()}), torch {torch.__version__}",
            "training time": (
                f"{self.train_seconds:,.0f} s in optimizer steps of the last session "
                f"({self.train_seconds / max(self.session_steps, 1):.2f} s/step)"
            ),
            "kilolayer": __version__,
        }
        return {
            "title": f"{config.preset or model_config.arch}: {model_config.num_layers}-layer {model_config.scheme}",
            "model_config": model_config,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "table": table,
            "data": self.data.description,
            "folder": str(folder),
        }

    def close(self) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.metrics.close()
        self.process_settings.restore()
        self.parallel.teardown()
