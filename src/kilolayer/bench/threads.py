"""Benchmark of the thread policy: the main job's training step under kilolayer's default policy vs fixed threads.

    python -m kilolayer.bench.threads                 # idle, then with 2 busy background processes
    python -m kilolayer.bench.threads --busy 2 --steps 3

The model is the gpt-1k-cpu preset's (1000 × 64 FoundationLayerNorm GPT, vocabulary 4096), one AdamW
step on the preset's batch (4 × 64 tokens), denormals flushed, as the trainer runs it. Each policy runs in its own process:

* ``default``: what ``kilolayer pretrain`` does (``kilolayer.threads.apply_thread_policy`` before torch);
* ``1 thread`` and ``N threads``: ``OMP_NUM_THREADS`` fixed, the wait policy torch's own (threads spin).

"Busy" starts that many CPU-bound background processes (a Python busy loop each) before the runs.
The load average the default policy saw is printed with its choice: on a shared machine the "idle"
row is only as idle as the machine was. A run that exceeds ``--max-seconds`` is stopped and reported
with the steps it finished (or as "> limit").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BUSY_LOOP = "while True: pass"


def worker(steps: int, warmup: int) -> None:
    """One policy's process: prints one JSON line per timed step, then the thread choice."""
    from ..threads import apply_thread_policy, choose_threads

    choice = apply_thread_policy() if os.environ.get("OMP_NUM_THREADS") is None else choose_threads()
    import torch

    from ..modeling import KiloForCausalLM
    from ..presets import build_model_config, resolve_config
    from ..train.config import TrainConfig
    from ..train.loop import build_optimizer

    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    config = resolve_config("gpt-1k-cpu")
    model = KiloForCausalLM(build_model_config(config["model"])).train()
    train = TrainConfig.from_dict(config["train"])
    optimizer = build_optimizer(model, train, sharded=False)
    input_ids = torch.randint(0, model.config.vocab_size, (train.batch_size, train.seq_len))
    print(json.dumps({"choice": choice.describe(), "threads": torch.get_num_threads()}), flush=True)
    for index in range(warmup + steps):
        started = time.perf_counter()
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= warmup:
            print(json.dumps({"step_seconds": time.perf_counter() - started}), flush=True)


def measure(policy: str, steps: int, warmup: int, max_seconds: float) -> dict:
    """Run one policy's worker; its median step time (None if no step finished in time) and thread choice."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("OMP_", "MKL_"))}
    if policy != "default":
        environment["OMP_NUM_THREADS"] = policy
    command = [sys.executable, "-m", "kilolayer.bench.threads", "--worker", "--steps", str(steps), "--warmup", str(warmup)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
    try:
        output, _ = process.communicate(timeout=max_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    seconds = [record["step_seconds"] for record in records if "step_seconds" in record]
    choice = next((record["choice"] for record in records if "choice" in record), "")
    return {"policy": policy, "choice": choice, "steps": len(seconds), "step_seconds": statistics.median(seconds) if seconds else None}


def settle_load(limit: float, max_seconds: float) -> None:
    """Wait until the 1-minute load average is below ``limit`` (it decays with a one-minute time constant), or give up."""
    deadline = time.monotonic() + max_seconds
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kilolayer.bench.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--busy", default="0,2", help="comma-separated counts of busy background processes (default 0,2)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per policy (median; default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--max-seconds", type=float, default=420, help="stop a policy's process after this long (default 420)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.steps, args.warmup)
        return 0

    from ..threads import available_cpus

    cpus = available_cpus()
    policies = ["default", "1", str(cpus)] if cpus > 1 else ["default", "1"]
    rows = []
    for busy in (int(count) for count in args.busy.split(",")):
        background = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
        try:
            if busy:
                time.sleep(5)  # let the load average see them (the default policy reads it)
            else:
                settle_load(limit=0.5, max_seconds=240)  # "idle": wait for the 1-minute average to forget earlier work
            for policy in policies:
                row = {"busy": busy, **measure(policy, args.steps, args.warmup, args.max_seconds), "load_after": os.getloadavg()[0]}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            for process in background:
                process.kill()
                process.wait()
    print(table(rows, args.max_seconds))
    return 0


def table(rows: list[dict], max_seconds: float) -> str:
    """Markdown: per load condition, each policy's s/step and its ratio to the better fixed choice."""
    lines = [
        "| background | policy | threads chosen | s/step | × best fixed | load avg after |",
        "|---|---|---|---|---|---|",
    ]
    for busy in sorted({row["busy"] for row in rows}):
        group = [row for row in rows if row["busy"] == busy]
        fixed = [row["step_seconds"] for row in group if row["policy"] != "default" and row["step_seconds"] is not None]
        best = min(fixed) if fixed else None
        for row in group:
            seconds = row["step_seconds"]
            shown = f"{seconds:.2f}" if seconds is not None else f"> {max_seconds:.0f} (no step)"
            ratio = f"{seconds / best:.2f}" if seconds is not None and best else "—"
            policy = "kilolayer default" if row["policy"] == "default" else f"OMP_NUM_THREADS={row['policy']}"
            lines.append(
                f"| {busy} busy | {policy} | {row['choice']} | {shown} | {ratio} | {row['load_after']:.1f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
