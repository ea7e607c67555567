"""Helpers for the training tests: tiny configs, subprocess runners and metrics readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kilolayer.presets import resolve_config
from kilolayer.train.metrics import read_metrics

TRAIN_SCRIPT = Path(__file__).parent / "train_script.py"


def tiny_config(corpus: Path, preset: str = "gpt-tiny", model: dict | None = None, **train) -> dict:
    """A tiny preset with short logging/eval/checkpoint periods; keyword arguments override the train section."""
    config = resolve_config(preset)
    config["train"].update(
        data=str(corpus), max_steps=12, log_every=1, eval_every=6, eval_batches=2, checkpoint_every=4, diagnostics_every=4
    )
    config["train"].update(train)
    config["model"].update(model or {})
    return config


def start_training(config: dict, out_dir: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``train(config, out_dir)`` in a fresh process (train_script.py), one thread, no progress bar."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    config_file = out_dir.parent / f"{out_dir.name}.config.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), str(config_file), str(out_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def run_training(config: dict, out_dir: Path, *args: str, env: dict | None = None, timeout: float = 300) -> dict:
    """Run to the end; the TrainResult as a dict (fails the test with stderr when the process fails)."""
    process = start_training(config, out_dir, *args, env=env)
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kilolayer", *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout
    )


def step_losses(out_dir: Path) -> dict[int, float]:
    """Per-step train losses of a run logged with log_every=1."""
    return {r["step"]: r["loss"] for r in read_metrics(out_dir / "metrics.jsonl") if r["kind"] == "train"}


def events(out_dir: Path, name: str) -> list[dict]:
    return [r for r in read_metrics(out_dir / "metrics.jsonl") if r["kind"] == "event" and r["event"] == name]


def run_torchrun(config: dict, out_dir: Path, nproc: int = 2, timeout: float = 600) -> dict:
    """``train(config, out_dir)`` under ``torchrun --standalone --nproc_per_node=nproc`` (gloo on CPU)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    config_file = out_dir.parent / f"{out_dir.name}.config.json"
    config_file.write_text(json.dumps(config), encoding="utf-8")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(TRAIN_SCRIPT), str(config_file), str(out_dir)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr[-4000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])
