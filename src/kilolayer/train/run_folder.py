"""The run folder and its resume policy: what ``--out`` may hold, which checkpoint a run continues from,
and whether the command is the same run as the one that wrote it.

``config.yaml`` holds the resolved config: ``kind`` (pretrain or finetune; a folder without it is a
pretraining run from before fine-tuning used this engine), the task's own sections and ``train``.
It is written once every input check has passed, so a refused command leaves no run folder behind.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .. import atomic
from ..errors import KiloError
from ..paths import check_writable_folder
from . import checkpoint
from .config import RESUMABLE_KEYS
from .metrics import METRICS, read_metrics

CONFIG_FILE = "config.yaml"
# Model settings that choose how a step is computed, not what: a command may differ from its run here.
COMPUTE_PATH_KEYS = frozenset({"fused_loss"})


def first_difference(saved: dict, current: dict) -> str | None:
    """The first setting (section.key=value) that differs between two resolved configs, resumable keys aside.

    A key the saved config lacks is a setting added to kilolayer after the run started: not a difference.
    """
    for section in sorted(key for key, value in saved.items() if isinstance(value, dict)):
        old, new = saved[section], current.get(section) or {}
        skipped = RESUMABLE_KEYS if section == "train" else COMPUTE_PATH_KEYS if section == "model" else ()
        for key in sorted(old):
            if key not in skipped and old.get(key) != new.get(key):
                return f"{section}.{key}={old.get(key)!r} (this config: {new.get(key)!r})"
    return None


def read_saved_config(out_dir: Path) -> dict | None:
    """The resolved config of the run already in ``out_dir`` (None when there is none)."""
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise KiloError(f"{path} is unreadable ({type(error).__name__}); choose a new --out") from None


class RunFolder:
    """``--out`` of one run of ``kind``; ``find_resume`` runs every check on it before anything is written."""

    def __init__(self, out_dir: Path, kind: str, parallel, warn):
        self.out_dir = out_dir
        self.kind = kind
        self.checkpoint_root = out_dir / "checkpoints"
        self.parallel = parallel
        self.warn = warn

    def find_resume(self, resume: str) -> tuple[Path, dict] | None:
        """The checkpoint to resume from (None: a new run), after every check on ``--out`` and ``resume``."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise KiloError(f"--out {out} is a file; give a folder")
        check_writable_folder(out, "--out")
        holds_run = any((out / name).exists() for name in (CONFIG_FILE, METRICS, "checkpoints"))
        if out.is_dir() and any(out.iterdir()) and not holds_run:
            raise KiloError(f"--out {out} exists, is not empty and holds no kilolayer run; choose a new or empty folder")
        if holds_run:
            self._check_kind()
        if resume == "never":
            if holds_run:
                raise KiloError(f"--out {out} already holds a run; continue it with --resume auto, or choose a new --out")
            return None
        if resume == "auto":
            return self._newest_checkpoint() if holds_run else None
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

    def _check_kind(self) -> None:
        """A fine-tuning command must not continue a pretraining run, nor the other way round."""
        saved = read_saved_config(self.out_dir)
        if saved is None and (self.out_dir / "finetune.json").is_file():
            raise KiloError(f"--out {self.out_dir} holds a fine-tuning run of an older kilolayer that cannot be continued; choose a new --out")
        kind = (saved or {}).get("kind", "pretrain")
        if kind != self.kind:
            names = {"pretrain": "pretraining", "finetune": "fine-tuning"}
            raise KiloError(
                f"--out {self.out_dir} holds a {names.get(kind, kind)} run, not a {names[self.kind]} run; choose another --out"
            )

    def _newest_checkpoint(self) -> tuple[Path, dict] | None:
        """Recover interrupted swaps and torn checkpoint writes, then the newest valid checkpoint."""
        out = self.out_dir
        if self.parallel.is_main:
            for target in atomic.leftover_targets(out):  # config.yaml, metrics.jsonl, model/ swapped when killed
                atomic.recover(target)
            checkpoint.remove_torn_writes(self.checkpoint_root)
        self.parallel.barrier()
        found = checkpoint.latest_valid(self.checkpoint_root, warn=self.warn)
        trained = [r["step"] for r in read_metrics(out / METRICS) if r.get("kind") == "train"]
        if found is None and trained:
            raise KiloError(
                f"--out {out} holds a run that trained {max(trained)} steps but has no checkpoint to continue from "
                f"(train.checkpoint_every=0); choose a new --out, or delete {out} to start over"
            )
        return found

    def saved_configs(self, resume_from: tuple[Path, dict] | None) -> list[tuple[Path, dict]]:
        """(source, resolved config) of the existing run: its config.yaml and the checkpoint it resumes from."""
        saved = []
        if (config := read_saved_config(self.out_dir)) is not None:
            saved.append((self.out_dir / CONFIG_FILE, config))
        if resume_from is not None:
            saved.append((resume_from[0], resume_from[1].get("config") or {}))
        return saved

    def saved_setting(self, resume_from, section: str, key: str, default=None):
        """One setting of the existing run (config.yaml first, else the checkpoint), or ``default`` for a new run."""
        for _, config in self.saved_configs(resume_from):
            values = config.get(section) or {}
            if values.get(key) is not None:
                return values[key]
        return default

    def check_same_run(self, resolved: dict, resume_from) -> None:
        """An existing run (config.yaml) or the resumed checkpoint must have been trained with this config."""
        for source, previous in self.saved_configs(resume_from):
            difference = first_difference(previous, resolved)
            if difference:
                raise KiloError(
                    f"{source} was trained with {difference}; resume with the same settings, or choose a new --out for a new run"
                )

    def write_config(self, resolved: dict) -> None:
        if self.parallel.is_main:
            atomic.write_text(self.out_dir / CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False))
        self.parallel.barrier()
