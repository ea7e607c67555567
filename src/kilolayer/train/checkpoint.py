"""Checkpoints: atomic, checksummed folders ``checkpoints/step-00000050/``; the newest valid one resumes.

A checkpoint is written into ``.step-….new``, every file fsynced, then ``meta.json`` (step, data
position, guard state, and each file's size and CRC-32) is written last and the folder swapped into
place by ``kilolayer.atomic`` (a step saved again keeps its old folder until the new one is in place). A folder without a readable ``meta.json`` or with a file whose size or CRC differs is torn or
corrupt: it is skipped with a warning in favour of the previous one.

Contents: ``model.safetensors`` and ``optimizer.pt`` (one process or DDP; loaded with
``weights_only=True``) or DCP shards (FSDP2), plus ``rng-rank{r}.pt`` per rank (torch, CUDA, numpy,
python RNG states) so that a resumed run continues bitwise identically.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from .. import atomic
from ..errors import KiloError
from . import distributed
from .faults import Faults

FORMAT = 1
NAME = re.compile(r"^step-(\d{8})$")
META = "meta.json"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root``, newest (highest step) first."""
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if path.is_dir() and NAME.match(path.name)]
    return sorted(found, key=lambda path: path.name, reverse=True)


def remove_torn_writes(root: Path) -> None:
    """Finish what a writer that died mid-write left: drop unfinished ``.step-….new`` folders (never valid) and
    put back a ``.step-….old`` whose replacement did not complete."""
    if root.is_dir():
        for target in atomic.leftover_targets(root):
            atomic.recover(target)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def read_meta(folder: Path) -> dict:
    """``meta.json`` of a checkpoint after checking every listed file's size and CRC-32; KiloError if invalid."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise KiloError(f"checkpoint {folder} has no readable {META} ({type(error).__name__}); it was torn or corrupted") from None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected["bytes"]:
            raise KiloError(f"checkpoint {folder}: {name} is missing or truncated")
        if _crc32(path) != expected["crc32"]:
            raise KiloError(f"checkpoint {folder}: {name} is corrupt (CRC-32 mismatch)")
    return meta


def latest_valid(root: Path, warn=warnings.warn) -> tuple[Path, dict] | None:
    """The newest checkpoint that passes ``read_meta``; broken newer ones are reported through ``warn``.

    None when there are no checkpoints; KiloError when there are some but none is valid.
    """
    candidates = list_checkpoints(root)
    for folder in candidates:
        try:
            return folder, read_meta(folder)
        except KiloError as error:
            warn(f"{error}; falling back to the previous checkpoint")
    if candidates:
        raise KiloError(f"no valid checkpoint in {root} ({len(candidates)} broken); delete them to start over, or pass --resume PATH")
    return None


def rng_state() -> dict:
    """All RNG states of this process, as tensors and numbers (loadable with weights_only)."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": position, "has_gauss": has_gauss, "gauss": gauss},
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64), "gauss": python_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))


def save_checkpoint(
    root: Path,
    step: int,
    *,
    parallel: distributed.Parallel,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep: int,
    faults: Faults,
) -> Path:
    """Write the checkpoint of ``step`` atomically (collective), then keep only the newest ``keep``.

    ``state`` is JSON-serializable training state (data position, guard, config); it goes into meta.json.
    """
    final = root / checkpoint_name(step)
    temp = atomic.staging_path(final)
    if parallel.is_main:
        atomic.new_version(final).mkdir()
    parallel.barrier()
    written = [temp / f"rng-rank{parallel.rank}.pt"]
    torch.save(rng_state(), written[0])
    if parallel.sharded:
        distributed.save_sharded(model, optimizer, temp)  # DCP fsyncs its own files
    elif parallel.is_main:
        save_model(distributed.unwrap(model), str(temp / "model.safetensors"))
        torch.save(optimizer.state_dict(), temp / "optimizer.pt")
        written += [temp / "model.safetensors", temp / "optimizer.pt"]
    for path in written:
        atomic.fsync(path)
    faults.kill_in_checkpoint(step)
    parallel.barrier()
    if parallel.is_main:
        files = {path.name: {"bytes": path.stat().st_size, "crc32": _crc32(path)} for path in sorted(temp.iterdir())}
        meta = {
            "format": FORMAT,
            "step": step,
            "world_size": parallel.world_size,
            "sharded": parallel.sharded,
            "optimizer_state": bool(optimizer.state),
            **state,
            "files": files,
        }
        (temp / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        atomic.commit(temp, final)  # the same step saved again (after a rollback) keeps its old folder until then
        for old in list_checkpoints(root)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    parallel.barrier()
    return final


def _load_tensors(path: Path, device: torch.device):
    """torch.load restricted to tensors, numbers and containers: a checkpoint can never run code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0]
        raise KiloError(f"{path} holds objects other than tensors and numbers ({reason}); refusing to unpickle it") from None


def load_checkpoint(
    folder: Path, meta: dict, *, parallel: distributed.Parallel, model: torch.nn.Module, optimizer: torch.optim.Optimizer, restore_rng: bool
) -> None:
    """Load model and optimizer state (and this rank's RNG states) from a checkpoint validated by ``read_meta``."""
    if meta["sharded"] != parallel.sharded:
        kinds = {True: "FSDP (sharded)", False: "single-process/DDP"}
        raise KiloError(
            f"checkpoint {folder} is {kinds[meta['sharded']]} but this run is {kinds[parallel.sharded]}; "
            f"resume it with train.distributed={'fsdp' if meta['sharded'] else 'ddp'}"
        )
    if parallel.sharded:
        distributed.load_sharded(model, optimizer, folder, with_optimizer=meta["optimizer_state"])
    else:
        weights = str(folder / "model.safetensors")
        missing, unexpected = load_model(distributed.unwrap(model), weights, strict=False, device=str(parallel.device))
        if missing or unexpected:
            raise KiloError(
                f"checkpoint {folder} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); check the model config"
            )
        optimizer.load_state_dict(_load_tensors(folder / "optimizer.pt", parallel.device))
    rng_file = folder / f"rng-rank{parallel.rank}.pt"
    if restore_rng and rng_file.is_file():  # absent when the world size grew: that rank keeps its fresh seed
        set_rng_state(_load_tensors(rng_file, torch.device("cpu")))
