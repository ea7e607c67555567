"""The training engine: one ``Trainer`` for pretraining and fine-tuning, parameterised by a ``Task`` (task.py).

One optimizer step = ``grad_accum`` micro-batches per rank, loss averaged, one AdamW update at
LR = lr × schedule(step) × guard scale. Everything a step depends on — weights, optimizer moments,
RNG states, the micro-batch index (batches are a pure function of it), the guard, the best validation —
is in the checkpoint, so a run killed at any point and resumed continues bitwise identically on CPU.

The concerns live in their own modules: the run folder and resume policy (``run_folder.py``), the
gradients of one step (``step.py``), validation (the task's; pretraining's in ``validation.py``), the
export and its model card (``export.py``). This module is the loop that joins them: the guard and
rollback, checkpoints, metrics.jsonl and TensorBoard, signals, ``max_minutes`` and the progress bar.

Files in ``out_dir``: ``config.yaml`` (the full resolved config), ``metrics.jsonl``, ``tensorboard/``,
``checkpoints/step-…/``, ``loss_curve.png`` and ``model/`` (the exported HF folder with a model card).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..paths import check_writable_folder
from . import checkpoint, distributed
from .config import TrainConfig
from .diagnostics import LayerDiagnostics, usage
from .export import card_facts, export_model, materialize, model_card
from .faults import Faults
from .guard import StabilityGuard
from .metrics import METRICS, MetricsLog
from .process import ProcessSettings
from .run_folder import RunFolder
from .schedule import learning_rate
from .step import compute_gradients
from .task import PretrainTask, Task

EXPORT_DIR = "model"


@dataclass
class TrainResult:
    steps: int  # optimizer steps completed (the run's step counter at the end)
    final_train_loss: float | None  # mean train loss over the last logged window
    validation: dict | None  # the last validation record's fields
    metric: str  # the task's validation metric ("loss" for pretraining)
    best_value: float | None  # its best value, reached at best_step
    best_step: int | None
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
    stopped_by: str = "max_steps"  # max_steps | max_minutes | signal | nonfinite | early_stop

    @property
    def final_valid_loss(self) -> float | None:
        return (self.validation or {}).get("loss")

    @property
    def best_valid_loss(self) -> float | None:
        return self.best_value if self.metric == "loss" else None


def train(config: dict, out_dir: Path, resume: str = "auto", progress: bool = True, data=None) -> TrainResult:
    """Pretrain the model of ``config`` ({"model": …, "train": …}, as ``resolve_config`` returns) into ``out_dir``.

    resume: "auto" continues from the newest valid checkpoint in ``out_dir`` (or starts when there is
    none), "never" refuses an ``out_dir`` that already holds a run, a path resumes that checkpoint.
    data: a prepared data object (``.tokenizer``, ``.description``, ``.batches(...)``); by default
    ``kilolayer.data.prepare_data`` builds it from the train section.
    """
    task = PretrainTask(config.get("model") or {}, data)
    return run_task(task, TrainConfig.from_dict(config.get("train") or {}), Path(out_dir), resume, progress)


def run_task(task: Task, config: TrainConfig, out_dir: Path, resume: str = "auto", progress: bool = True, device=None) -> TrainResult:
    """Train ``task`` into ``out_dir`` and let it finish (its reports), then restore the process settings."""
    trainer = Trainer(task, config, out_dir, resume, progress, device)
    try:
        result = trainer.run()
        task.finish(trainer, result)
        return result
    finally:
        trainer.close()


def build_optimizer(model: torch.nn.Module, config: TrainConfig, sharded: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only; fused kernels, or foreach over FSDP2 shards."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    kernel = {"foreach": True} if sharded else {"fused": True}
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, **kernel)


def final_seconds(trainer) -> float:
    """What the end of the run will cost: the final validation, checkpoint and export, each the last one's measured
    time, else an estimate (a validation batch is two forward passes; on the loaded 2-core CPU at 1000 × 64, four
    batches took 239 s at 55-64 s per step; an export writes the weights as a checkpoint does)."""
    config = trainer.config
    validation = 0.0
    if config.eval_every:
        validation = trainer.validation_seconds if trainer.validation_seconds is not None else config.eval_batches * trainer.last_step_seconds
    saves = (1 if config.checkpoint_every else 0) + (1 if config.export else 0)
    return validation + saves * trainer.save_seconds


class Trainer:
    """One run of a task: set up in ``__init__`` (all input checks first, nothing written on bad input), then ``run()``."""

    def __init__(self, task: Task, config: TrainConfig, out_dir: Path, resume: str, progress: bool, device=None):
        self.started = time.monotonic()
        self.task = task
        self.config = config
        task.check(config)
        self.parallel = distributed.setup(config.distributed, device)
        self.process_settings = ProcessSettings(self.parallel.device)
        self.process_settings.apply()
        try:
            self._build(out_dir, resume, progress)
        except BaseException:
            self.process_settings.restore()
            self.parallel.teardown()
            raise

    def _build(self, out_dir: Path, resume: str, progress: bool) -> None:
        task, config = self.task, self.config
        self.progress = progress and self.parallel.is_main
        self.warnings: list[str] = []
        self.warned_idle_blocks = False
        self.faults = Faults()
        self.folder = RunFolder(out_dir, task.kind, self.parallel, self._warn)
        self.resume_from = self.folder.find_resume(resume)
        for path, name in task.writable_folders():
            check_writable_folder(path, name)

        task.prepare(self)
        if config.decay_steps is None:  # the horizon of the run's first invocation (max_steps for runs from before decay_steps)
            stored = self.folder.saved_setting(self.resume_from, "train", "decay_steps")
            config.decay_steps = stored or self.folder.saved_setting(self.resume_from, "train", "max_steps", config.max_steps)
        self.resolved = {"kind": task.kind, **task.settings(), "train": config.to_dict()}
        self.folder.check_same_run(self.resolved, self.resume_from)
        if config.max_steps > config.decay_steps and config.schedule in ("cosine", "linear"):
            self._warn(
                f"train.max_steps {config.max_steps} is past the schedule's horizon (step {config.decay_steps}, train.decay_steps): "
                f"the steps after it train at the LR floor, {config.lr * config.min_lr_ratio:g}; plan a longer run with "
                f"train.decay_steps in a new --out"
            )

        self._seed_everything(config.seed)
        model = task.build_model(self.parallel.device)
        if config.activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if config.compile:
            for block in model.model.layers:
                block.compile()
        model.train()
        self.model = model
        self.wrapped = self.parallel.wrap(model)
        self.optimizer = build_optimizer(model, config, self.parallel.sharded)
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.diagnostics = LayerDiagnostics(model, self.parallel)
        self._seed_everything(config.seed + self.parallel.rank)  # dropout streams differ per rank

        self.train_batches = task.train_batches(config, self.parallel.rank, self.parallel.world_size)
        self.step = 0
        self.next_batch = 0  # this rank's micro-batch index
        self.guard = StabilityGuard(config)
        self.best_value: float | None = None  # of task.metric, over this run's validations
        self.best_step: int | None = None
        self.evaluations_since_best = 0
        self.saved_at: tuple[int, int] | None = None
        self.last_checkpoint: Path | None = self.resume_from[0] if self.resume_from else None
        if self.resume_from is not None:
            self._load(*self.resume_from, restore_rng=True)
            self.saved_at = (self.step, self.next_batch)
        self.folder.write_config(self.resolved)  # every check has passed: the run folder is created now, not before
        self.metrics = MetricsLog(out_dir, self.parallel.is_main, self.step if self.resume_from else None)

        self.window = {"losses": [], "grad_norms": [], "seconds": 0.0, "tokens": 0}
        self.train_seconds = 0.0
        self.last_step_seconds = 0.0  # to stop before a step that would overrun max_minutes
        self.validation_seconds: float | None = None  # the last validation's duration (max_minutes keeps room for one)
        self.save_seconds = 0.0  # the last checkpoint's duration (max_minutes keeps room for the final save and export)
        self.session_steps = 0  # optimizer steps taken by this invocation
        self.trained_tokens = 0
        self.last_train_loss: float | None = None
        self.last_valid: dict | None = None
        self.stop_signal: int | None = None
        self.previous_handlers: dict = {}
        self.bar = None

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.parallel.is_main:
            print(f"kilolayer {self.task.kind}: warning: {message}", file=sys.stderr)

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
        started = time.monotonic()
        state = {
            "micro_batches": self.next_batch * self.parallel.world_size,
            "guard": self.guard.state_dict(),
            "best": {"value": self.best_value, "step": self.best_step, "evaluations_since": self.evaluations_since_best},
            "config": self.resolved,
        }
        folder = checkpoint.save_checkpoint(
            self.folder.checkpoint_root,
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
        self.save_seconds = time.monotonic() - started
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
            best = meta.get("best") or {}
            self.best_value, self.best_step = best.get("value"), best.get("step")
            self.evaluations_since_best = best.get("evaluations_since", 0)

    def _rollback(self) -> str:
        """Back to the newest valid checkpoint with a lower LR; "stop" when there is none to go back to."""
        root = self.folder.checkpoint_root
        found = checkpoint.latest_valid(root, warn=self._warn) if self.config.checkpoint_every else None
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

    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(self.parallel.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch_on_device(self, batches, index: int) -> dict[str, torch.Tensor]:
        return {key: value.to(self.parallel.device, non_blocking=True) for key, value in batches.get_batch(index).items()}

    def tokens_seen(self) -> int:
        return self.next_batch * self.parallel.world_size * self.config.batch_size * self.config.seq_len

    def _next_train_batch(self) -> dict[str, torch.Tensor]:
        batch = self.batch_on_device(self.train_batches, self.next_batch)
        self.next_batch += 1
        return batch

    def _train_step(self) -> str:
        """The gradients of one step (step.py), the guard's verdict, and the update if it says "step"."""
        config = self.config
        number = self.step + 1  # the step being taken, 1-based as in the logs
        lr = learning_rate(config, self.step, self.guard.state.lr_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        diagnose = bool(config.diagnostics_every) and number % config.diagnostics_every == 0
        started = time.perf_counter()
        gradients = compute_gradients(
            self.wrapped,
            self._next_train_batch,
            grad_accum=config.grad_accum,
            parallel=self.parallel,
            autocast=self.autocast,
            parameters=self.parameters,
            grad_clip=config.grad_clip,
            diagnostics=self.diagnostics if diagnose else None,
            is_encoder_decoder=self.task.model_config.is_encoder_decoder,
            before_clip=lambda: self.faults.poison_gradients(number, self.parameters),
        )
        verdict, events = self.guard.check(number, gradients.loss, gradients.grad_norm)
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
        tokens = gradients.tokens
        self.train_seconds += seconds
        self.last_step_seconds = seconds
        self.session_steps += 1
        self.trained_tokens += tokens
        window = self.window
        window["losses"].append(gradients.loss)
        window["grad_norms"].append(gradients.grad_norm)
        window["seconds"] += seconds
        window["tokens"] += tokens
        window["lr"] = lr
        if diagnose:
            self._write_diagnostics(number, gradients.layer_grads, before, gradients.activations)
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
            tokens=self.tokens_seen(),
        )
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"loss {self.last_train_loss:.3f}, {window['tokens'] / window['seconds']:,.0f} tok/s, lr {window['lr']:.2e}", refresh=False
            )
        self._reset_window()

    # ------------------------------------------------------------------ validation and the best model

    def _validate(self) -> None:
        """The task's validation; a new best resets the patience count and, for a task that keeps its best
        model (fine-tuning), exports it."""
        started = time.monotonic()
        self.model.eval()
        fields = self.task.validate(self)
        self.model.train()
        self.last_valid = {"step": self.step, **fields}
        value = fields[self.task.metric]
        improved = math.isfinite(value) and (
            self.best_value is None or (value > self.best_value if self.task.higher_is_better else value < self.best_value)
        )
        if improved:
            self.best_value, self.best_step, self.evaluations_since_best = value, self.step, 0
        else:
            self.evaluations_since_best += 1
        self.metrics.write("valid", step=self.step, **fields)
        if self.progress and self.bar is not None:
            shown = ", ".join(f"{key} {value:.4f}" for key, value in fields.items() if isinstance(value, float))
            self.bar.write(f"step {self.step}: validation {shown}")
        self.validation_seconds = time.monotonic() - started
        if improved and self.task.keeps_best and self.config.export:
            self._export()

    # ------------------------------------------------------------------ the run

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.stop_signal = signum
        if self.bar is not None:
            self.bar.write(f"kilolayer {self.task.kind}: {signal.Signals(signum).name}: saving a checkpoint after this step, then exiting")

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _stop_reason(self) -> str | None:
        # Stop before a step whose end, plus the final validation, checkpoint and export, would pass max_minutes
        # (a 1000-layer CPU step takes seconds to minutes, the final validation several steps' time).
        projected = time.monotonic() - self.started + self.last_step_seconds + final_seconds(self)
        out_of_time = self.config.max_minutes is not None and projected > 60 * self.config.max_minutes
        patience = self.task.patience
        early = patience is not None and self.evaluations_since_best >= patience
        local = "signal" if self.stop_signal is not None else "max_minutes" if out_of_time else "early_stop" if early else None
        if self.parallel.world_size == 1:
            return local
        stop = self.parallel.agree(local is not None)
        return (local or "signal") if stop else None

    def _announce(self) -> None:
        if not self.parallel.is_main:
            return
        task = self.task
        parameters = sum(p.numel() for p in self.model.parameters())
        self.metrics.write(
            "event",
            event="resume" if self.resume_from else "start",
            step=self.step,
            model=task.model_config.summary(),
            parameters=parameters,
            data=task.description,
            step_size=self.task.step_size(self.config, self.parallel.world_size),
            world_size=self.parallel.world_size,
            strategy=self.parallel.strategy,
            device=str(self.parallel.device),
            threads=self.process_settings.describe(),
            warnings=self.warnings,
        )
        if self.progress:
            resumed = f", resumed from step {self.step}" if self.resume_from else ""
            print(
                f"kilolayer {task.kind}: {task.model_config.summary()}, {parameters / 1e6:.1f}M parameters\n"
                f"  data: {task.description}\n"
                f"  {self.task.step_size(self.config, self.parallel.world_size)} on {self.parallel.world_size} × {self.parallel.device.type}"
                f" ({self.parallel.strategy}), out: {self.folder.out_dir}{resumed}\n"
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
            desc=self.task.kind,
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
        """Log, validate, checkpoint and export at the end (a signal gets only the checkpoint). A task that keeps
        its best model exported it at each new best; the others export the last weights."""
        config = self.config
        self._log_train()
        interrupted = stopped_by == "signal"
        if config.eval_every and not interrupted and (self.last_valid is None or self.last_valid["step"] != self.step):
            self._validate()
        self._save()
        export_dir = None
        if config.export and not interrupted and not self.guard.diverged and not self.task.keeps_best:
            export_dir = self._export()  # the divergence flag never blocks it
        elif self.task.keeps_best and (self.folder.out_dir / EXPORT_DIR).is_dir():
            export_dir = self.folder.out_dir / EXPORT_DIR
        fields = self.last_valid and {key: value for key, value in self.last_valid.items() if key != "step"}
        result = TrainResult(
            steps=self.step,
            final_train_loss=self.last_train_loss,
            validation=fields,
            metric=self.task.metric,
            best_value=self.best_value,
            best_step=self.best_step,
            diverged=self.guard.diverged,
            diverged_at=self.guard.state.diverged_at,
            flagged_at=self.guard.state.flagged_at,
            skipped_steps=self.guard.state.skipped_steps,
            rollbacks=self.guard.state.rollbacks,
            wall_seconds=time.monotonic() - self.started,
            tokens_per_second=self.trained_tokens / self.train_seconds if self.train_seconds else 0.0,
            export_dir=export_dir,
            metrics_path=self.folder.out_dir / METRICS,
            checkpoint=self.last_checkpoint,
            stopped_by=stopped_by,
        )
        summary = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(result).items()}
        self.metrics.write("event", event="stop", step=self.step, **summary)
        return result

    def _export(self) -> Path:
        """The HF folder ``out_dir/model`` (collective under FSDP, where the weights are gathered first)."""
        model = self.model
        if self.parallel.sharded:
            state = distributed.full_model_state(self.wrapped)
            model = materialize(type(self.model), self.task.model_config, state) if self.parallel.is_main else None
        folder = self.folder.out_dir / EXPORT_DIR
        if self.parallel.is_main:
            export_model(model, self.task.tokenizer, folder, model_card(card_facts(self, folder)))
            self.metrics.write("event", event="export", step=self.step, path=str(folder))
        self.parallel.barrier()
        return folder

    def close(self) -> None:
        for signum, handler in self.previous_handlers.items():
            signal.signal(signum, handler)
        self.metrics.close()
        self.process_settings.restore()
        self.parallel.teardown()
