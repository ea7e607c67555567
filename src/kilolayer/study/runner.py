"""Run a study's cells: each a short training run in its own process, resumable after any interruption.

A study folder holds ``cells/<cell id>/``, each with ``cell.json`` (the cell's axes and resolved
config, written before it starts) and, once it has finished, ``result.json``, written atomically by
the worker (``study/worker.py``): its existence is the one sign that a cell is done, so re-running a
study skips those cells, and a cell killed half-way runs again (resuming from its own checkpoint).

One process per cell, not one pool: every cell starts from the same fresh state, a cell that dies
(out of memory, a segfault) cannot take the others down, and its log is its own file. Workers die
with the study process (``PR_SET_PDEATHSIG``), so a killed study leaves no orphan still writing into
its folder; a lock on the folder stops two studies from running the same cells at once.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import KiloError
from ..threads import available_cpus

RESULT_FILE = "result.json"
CELL_FILE = "cell.json"
LOG_FILE = "cell.log"
POLL_SECONDS = 0.5
STOP_SECONDS = 120  # time for an interrupted cell to write its checkpoint


@dataclass(frozen=True)
class Cell:
    """One training run of a study: ``axes`` are the values that set it apart (for tables and plots)."""

    id: str
    axes: dict
    config: dict  # resolved {"model": {...}, "train": {...}}
    zero_shot: dict | None = None  # {"tasks", "limit", "data_dir"}: evaluate the trained model (GPT)


@dataclass
class Outcome:
    """What a study run leaves: the result records of all finished cells, in grid order, and the failures."""

    records: list[dict]
    failures: dict[str, str]  # cell id → why it failed, and where its log is
    data: str = ""  # what the cells trained on (corpus, tokens, tokenizer)
    baselines: dict | None = None  # unigram / bigram cross-entropies of the validation batches (``baselines.py``)
    pending: tuple[str, ...] = ()  # cells not finished yet (a report written with --report-only)


def visible_gpus() -> list[str]:
    """The GPUs cells can be placed on, one cell per GPU: $CUDA_VISIBLE_DEVICES's entries, else all; none without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [device.strip() for device in listed.split(",") if device.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def default_jobs(threads_per_cell: int) -> int:
    """One cell per GPU; on CPUs, as many cells as the cores allow at ``threads_per_cell`` each."""
    gpus = visible_gpus()
    return len(gpus) if gpus else max(1, available_cpus() // threads_per_cell)


def write_json_atomic(path: Path, value) -> None:
    """Replace ``path`` with the JSON of ``value`` through ``kilolayer.atomic``: a reader sees the whole file or none."""
    from ..atomic import write_text

    write_text(path, json.dumps(value, indent=1, allow_nan=True))


def read_record(cell_dir: Path) -> dict | None:
    path = cell_dir / RESULT_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def first_difference(old, new, prefix: str = "") -> str | None:
    """The first key path where two nested configs differ, as ``train.lr: 0.001 → 0.01``."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            difference = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if difference:
                return difference
        return None
    return None if old == new else f"{prefix.rstrip('.')}: {old!r} → {new!r}"


def run_cells(
    study_dir: Path, cells: list[Cell], jobs: int, threads_per_cell: int, progress: bool = True
) -> Outcome:
    """Run every cell that has no result yet, ``jobs`` at a time, each with ``threads_per_cell`` threads (and its own GPU, if any)."""
    cells_dir = study_dir / "cells"
    check_unchanged(study_dir, cells)
    cells_dir.mkdir(parents=True, exist_ok=True)
    with _study_lock(study_dir), _terminate_like_ctrl_c():
        todo = deque(cell for cell in cells if _prepare(cells_dir / cell.id, cell))
        gpus = visible_gpus()
        free_slots = deque(range(jobs))  # slot i runs on GPU i (modulo the GPUs there are)
        failures: dict[str, str] = {}
        running: dict[str, tuple[subprocess.Popen, int]] = {}
        bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="cells", unit="cell", disable=not progress)
        try:
            while todo or running:
                while todo and free_slots:
                    cell, slot = todo.popleft(), free_slots.popleft()
                    gpu = gpus[slot % len(gpus)] if gpus else None
                    running[cell.id] = (_launch(cells_dir / cell.id, threads_per_cell, gpu), slot)
                time.sleep(POLL_SECONDS)
                for cell_id, (process, slot) in list(running.items()):
                    if process.poll() is None:
                        continue
                    del running[cell_id]
                    free_slots.append(slot)
                    record = read_record(cells_dir / cell_id)
                    if record is None:
                        failures[cell_id] = _failure_message(cells_dir / cell_id, process.returncode)
                    bar.update()
                    bar.set_postfix_str(f"{cell_id}: {record['status'] if record else 'failed'}")
        finally:
            _stop(process for process, _ in running.values())
            bar.close()
    records = [record for cell in cells if (record := read_record(cells_dir / cell.id)) is not None]
    return Outcome(records, failures)


def _spec(cell: Cell) -> dict:
    return {"id": cell.id, "axes": cell.axes, "config": cell.config, "zero_shot": cell.zero_shot}


def check_unchanged(study_dir: Path, cells: list[Cell]) -> None:
    """Every cell folder from an earlier run must describe the same training run (checked before anything is
    written): a study re-run with a different budget or data would otherwise mix old and new results in one table."""
    for cell in cells:
        spec_path = study_dir / "cells" / cell.id / CELL_FILE
        if spec_path.is_file():
            old = json.loads(spec_path.read_text(encoding="utf-8"))
            compared = ("config", "zero_shot")
            difference = first_difference({key: old.get(key) for key in compared}, {key: _spec(cell)[key] for key in compared})
            if difference:
                raise KiloError(
                    f"{spec_path.parent} was run with a different configuration ({difference}); "
                    "give the study another --out folder or delete that one"
                )


def _prepare(cell_dir: Path, cell: Cell) -> bool:
    """Write the cell's spec (``check_unchanged`` has passed); True when the cell still has to run."""
    spec = _spec(cell)
    spec_path = cell_dir / CELL_FILE
    if spec_path.is_file():
        return read_record(cell_dir) is None
    cell_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec_path, spec)
    return True


def _launch(cell_dir: Path, threads: int, gpu: str | None) -> subprocess.Popen:
    from ..threads import user_wait, wait_setting

    # The thread policy of kilolayer.threads: how the cell's threads wait between operations, unless the user said.
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if user_wait(os.environ) is None:
        name, value = wait_setting(threads)
        environment[name] = value
    if gpu is not None:
        environment["CUDA_VISIBLE_DEVICES"] = gpu
    with open(cell_dir / LOG_FILE, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "kilolayer.study.worker", str(cell_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,  # Ctrl-C reaches the study only, which then stops the cells one signal each
            preexec_fn=_die_with_parent,
        )


def _stop(processes) -> None:
    """Interrupted (Ctrl-C): ask each running cell to checkpoint and exit (the engine's SIGTERM handling), then make sure."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when the study process dies, however it dies."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _failure_message(cell_dir: Path, returncode: int) -> str:
    log = cell_dir / LOG_FILE
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    lines = [line for line in re.split(r"[\r\n]", text) if line.strip()]  # \r: progress bars redraw in place
    if returncode < 0:
        reason = f"killed by signal {signal.Signals(-returncode).name}"
        if returncode == -signal.SIGKILL:
            reason += " (out of memory?)"
    else:
        reason = lines[-1] if lines else f"exit status {returncode}"
    return f"{reason} (log: {log})"


@contextmanager
def _terminate_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, ``kill``) stops the study as Ctrl-C does: cells checkpoint, then exit."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _study_lock(study_dir: Path) -> Iterator[None]:
    """An exclusive lock on the study folder, released by the kernel however the process ends."""
    path = study_dir / ".lock"
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KiloError(f"another study is running in {study_dir}; wait for it or use another --out") from None
        yield
