"""The benchmark run: kilolayer vs HF transformers, side by side, under the same machine load.

Each model lives in its own worker process (``worker.py``), so peak memories do not mix. For each
family and size the coordinator starts the kilolayer worker, warms it up, and — when the HF model
will fit in memory beside it — starts the HF worker and alternates training steps between the two
(then evaluation batches), with a square-matmul probe of the hardware peak after each pair. The
medians of these interleaved samples give ratios that stay meaningful on a loaded shared machine.
When both do not fit (GPT-1k), the two run one after the other and the result says ``sequential``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from .models import IMPLEMENTATIONS, Size, parameter_count, training_flops

GIB = 2**30
HF_MEMORY_FACTOR = 1.5  # HF's peak relative to kilolayer's, to decide whether both fit at once
MEMORY_HEADROOM = 2 * GIB  # left free for the other processes on the machine
TRAINING_BYTES_PER_PARAMETER = 16  # fp32 weights, gradients and AdamW's two moments
ACTIVATION_ALLOWANCE = 1 * GIB  # checkpointed activations, logits, the interpreter
ADAMW_TIMING_BYTES_PER_PARAMETER = 8  # a second optimizer's moments while timing AdamW kernels
PEAK_KEYS = {"peak_rss_bytes", "peak_device_bytes"}
PROBE_SIZE = 1024  # square matmuls of the peak probe: 2.1 GFLOP each
PROBE_REPEATS = 16


@dataclasses.dataclass
class BenchOptions:
    sizes: list[Size]
    families: list[str]
    steps: int = 5
    warmup: int = 2
    eval_batches: int = 3
    batch: int = 8
    length: int = 64
    threads: int = dataclasses.field(default_factory=torch.get_num_threads)
    precision: str = "fp32"
    device: str = "cpu"
    checkpointing: str = "auto"  # auto (on for GPT-1k-sized stacks) | on | off
    compile: bool = False
    optimizer: str = "fused"
    hf_flush_denormal: bool = True  # False: HF as it runs out of the box (torch's default floating-point mode)
    adamw_kernels: bool = True  # also time one AdamW step per kernel on the kilolayer model


class WorkerFailed(RuntimeError):
    pass


class WorkerProcess:
    """A worker subprocess; ``ask(command)`` returns its JSON reply or raises WorkerFailed."""

    def __init__(self, spec: dict):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kilolayer.bench.worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1,
        )
        self.ready = self._reply()

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            if code < 0:  # a signal: the log holds only warnings
                raise WorkerFailed(f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else ""))
            self.log.seek(0)
            lines = self.log.read().strip().splitlines()
            raise WorkerFailed(f"exit code {code}" + (f": {lines[-1]}" if lines else ""))
        return json.loads(line)

    def ask(self, command: str) -> dict:
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the reply read reports why it died
        return self._reply()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()
        self.log.close()


def matmul_peak(threads: int, dtype: torch.dtype, device: str) -> float:
    """FLOP/s of a loop of square matmuls (about 0.1 s unloaded): the matmul peak under the current load.

    One longer loop, not the best of short ones: on a shared machine the training steps see the
    average CPU share, so the probe must average over scheduler slices too.
    """
    torch.set_num_threads(threads)
    a = torch.randn(PROBE_SIZE, PROBE_SIZE, dtype=dtype, device=device)
    b = torch.randn(PROBE_SIZE, PROBE_SIZE, dtype=dtype, device=device)
    torch.mm(a, b)  # warm-up: thread pool, caches
    if device != "cpu":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(PROBE_REPEATS):
        torch.mm(a, b)
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * PROBE_SIZE**3 * PROBE_REPEATS / (time.perf_counter() - started)


def available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (the memory a new process can take without swapping)."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


class PairRun:
    """Benchmarks one family at one size: the kilolayer and the HF model, interleaved when both fit."""

    def __init__(self, family: str, size: Size, options: BenchOptions, log):
        self.family, self.size, self.options, self.log = family, size, options, log
        self.checkpointing = size.default_checkpointing if options.checkpointing == "auto" else options.checkpointing == "on"
        self.samples = {name: {"train": [], "eval": []} for name in IMPLEMENTATIONS}
        self.info: dict[str, dict] = {name: {} for name in IMPLEMENTATIONS}
        self.workers: dict[str, WorkerProcess] = {}
        self.peaks: list[float] = []
        self.dtype = torch.bfloat16 if options.precision == "bf16" else torch.float32
        self.parameters = parameter_count(family, size)

    def spec(self, implementation: str) -> dict:
        o = self.options
        return {
            "implementation": implementation, "family": self.family, "size": dataclasses.asdict(self.size),
            "batch": o.batch, "length": o.length, "threads": o.threads, "precision": o.precision, "device": o.device,
            "checkpointing": self.checkpointing, "compile": o.compile and implementation == "kilolayer",
            "optimizer": o.optimizer, "seed": 0,
            "flush_denormal": implementation == "kilolayer" or o.hf_flush_denormal,
        }

    def run(self) -> dict:
        load_before = os.getloadavg()
        try:
            self._start("kilolayer")
            self._warm_up("kilolayer")
            needed = HF_MEMORY_FACTOR * self.info["kilolayer"].get("peak_rss_bytes", 0)
            interleaved = "kilolayer" in self.workers and needed < available_memory() - MEMORY_HEADROOM
            if interleaved:
                self._start("hf")
                self._warm_up("hf")
                self._measure(["kilolayer", "hf"])
            else:
                self._measure(["kilolayer"])
                self._finish("kilolayer")
                self._start("hf")
                self._warm_up("hf")
                self._measure(["hf"])
        finally:
            for name in list(self.workers):
                self._finish(name)
        return self._result("interleaved" if interleaved else "sequential", load_before)

    def _start(self, name: str) -> None:
        """Start the worker, unless its training state cannot fit in host memory (an OOM kill on a shared
        machine can take other people's processes with it)."""
        needed = self.parameters * TRAINING_BYTES_PER_PARAMETER + ACTIVATION_ALLOWANCE
        if self.options.device == "cpu" and needed > available_memory():
            self.info[name]["error"] = (
                f"skipped: training needs about {needed / GIB:.1f} GiB (weights, grads, AdamW), "
                f"{available_memory() / GIB:.1f} GiB available"
            )
            self.log(f"  {name}: {self.info[name]['error']}")
            return
        self.log(f"  {name}: building {self.family} {self.size.label}")
        try:
            self.workers[name] = worker = WorkerProcess(self.spec(name))
        except WorkerFailed as error:
            self.info[name]["error"] = str(error)
            return
        self.info[name].update(worker.ready)

    def _ask(self, name: str, command: str) -> dict | None:
        """The worker's reply; on failure the error is recorded and the worker dropped."""
        worker = self.workers.get(name)
        if worker is None:
            return None
        try:
            reply = worker.ask(command)
        except WorkerFailed as error:
            self.info[name]["error"] = f"{command}: {error}"
            worker.close()
            del self.workers[name]
            return None
        for key in PEAK_KEYS & reply.keys():  # kept after every reply: a worker killed later leaves its peak so far
            self.info[name][key] = max(reply[key], self.info[name].get(key, 0))
        return reply

    def _warm_up(self, name: str) -> None:
        for _ in range(self.options.warmup):
            self._ask(name, "train")
        self._ask(name, "eval")

    def _measure(self, names: list[str]) -> None:
        """Alternate the workers step by step, probing the matmul peak after each round."""
        if not any(name in self.workers for name in names):
            return
        for command, rounds in (("train", self.options.steps), ("eval", self.options.eval_batches)):
            for index in range(rounds):
                for name in names:
                    reply = self._ask(name, command)
                    if reply is not None:
                        self.samples[name][command].append(reply)
                        if command == "train":
                            self.log(f"  {name} step {index + 1}/{rounds}: {reply['seconds']:.2f} s")
                self.peaks.append(matmul_peak(self.options.threads, self.dtype, self.options.device))

    def _finish(self, name: str) -> None:
        """Final peaks, then (kilolayer, memory permitting) one AdamW step per kernel; stops the worker."""
        if name not in self.workers:
            return
        self._ask(name, "stats")
        spare = available_memory() - self.parameters * ADAMW_TIMING_BYTES_PER_PARAMETER - MEMORY_HEADROOM
        if name == "kilolayer" and self.options.adamw_kernels and (self.options.device != "cpu" or spare > 0):
            adamw = self._ask(name, "adamw")
            if adamw is not None:
                self.info[name]["adamw_step_s"] = adamw
        if name in self.workers:
            self.workers.pop(name).close()

    def _result(self, schedule: str, load_before) -> dict:
        tokens = self.options.batch * self.options.length
        flops = training_flops(self.family, self.size, self.options.batch, self.options.length)
        peak = statistics.median(self.peaks) if self.peaks else None
        sides = {}
        for name in IMPLEMENTATIONS:
            side = dict(self.info[name])
            train, evaluation = self.samples[name]["train"], self.samples[name]["eval"]
            if train:
                step = statistics.median(s["seconds"] for s in train)
                side.update(
                    step_s=step,
                    step_samples_s=[s["seconds"] for s in train],
                    forward_backward_s=statistics.median(s["forward_backward_s"] for s in train),
                    optimizer_s=statistics.median(s["optimizer_s"] for s in train),
                    tokens_per_s=tokens / step,
                    mfu=flops / step / peak if peak else None,
                )
            if evaluation:
                side["eval_requests_per_s"] = statistics.median(s["requests"] / s["seconds"] for s in evaluation)
            sides[name] = side
        return {
            "family": self.family,
            "size": self.size.label,
            "heads": self.size.heads,
            "checkpointing": self.checkpointing,
            "schedule": schedule,
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "matmul_peak_flops": peak,
            "model_flops_per_step": flops,
            **sides,
            "ratio": {key: _ratio(sides, key) for key in ("tokens_per_s", "eval_requests_per_s", "peak_rss_bytes", "build_s")},
        }


def _ratio(sides: dict, key: str) -> float | None:
    kilo, hf = sides["kilolayer"].get(key), sides["hf"].get(key)
    return kilo / hf if kilo and hf else None


def run_bench(options: BenchOptions, log=print) -> dict:
    """Every family at every size, one pair at a time; returns the JSON-ready report."""
    started = time.time()
    load_before = os.getloadavg()
    results = []
    for size in options.sizes:
        for family in options.families:
            log(f"{family} {size.label} ({size.heads} heads)")
            results.append(PairRun(family, size, options, log).run())
    options_record = {**dataclasses.asdict(options), "sizes": [size.label for size in options.sizes]}
    return {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "wall_s": time.time() - started,
        "machine": machine(),
        "options": options_record,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "results": results,
    }
