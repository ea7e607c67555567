"""One benchmarked model in its own process, so that its peak memory is its own.

Started by ``throughput.py`` as ``python -m kilolayer.bench.worker SPEC_JSON``. It builds the model,
reports ``ready``, then answers one JSON line per command read from stdin (``train``, ``eval``,
``adamw``, ``stats``) until stdin closes. The coordinator sends the commands to the kilolayer and
the HF worker in turn, so both are timed under the same machine load.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch

from .models import Size, build_model, make_batch, score_requests

ADAMW_KERNELS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


class Worker:
    def __init__(self, spec: dict):
        self.spec = spec
        self.family = spec["family"]
        self.device = torch.device(spec["device"])
        self.autocast_dtype = torch.bfloat16 if spec["precision"] == "bf16" else None
        torch.set_num_threads(spec["threads"])
        # deep narrow nets produce denormals, many times slower on CPU; kilolayer's trainer always flushes them
        torch.set_flush_denormal(spec["flush_denormal"])
        torch.manual_seed(spec["seed"])
        size = Size(**spec["size"])
        started = time.perf_counter()
        self.model = build_model(spec["implementation"], self.family, size)
        self.build_seconds = time.perf_counter() - started
        self.model.to(self.device).train()
        if spec["checkpointing"]:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if spec["compile"]:  # kilolayer only: one compiled block code shared by all blocks, as the trainer does
            for block in self.model.model.layers:
                block.compile()
        self.optimizer = self._adamw(spec["optimizer"])
        self.batch = {key: value.to(self.device) for key, value in make_batch(self.family, spec["batch"], spec["length"]).items()}

    def _adamw(self, kernel: str) -> torch.optim.AdamW:
        return torch.optim.AdamW(self.model.parameters(), lr=1e-4, **ADAMW_KERNELS[kernel])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _forward(self, **batch):
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            return self.model(**batch)

    def ready(self) -> dict:
        parameters = sum(p.numel() for p in self.model.parameters())
        return {"build_s": self.build_seconds, "parameters": parameters, **self.stats()}

    def train(self) -> dict:
        """One optimizer step: zero grads, forward, backward, AdamW."""
        self._sync()
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        self._forward(**self.batch).loss.backward()
        self._sync()
        backward_done = time.perf_counter()
        self.optimizer.step()
        self._sync()
        finished = time.perf_counter()
        timings = {"seconds": finished - started, "forward_backward_s": backward_done - started, "optimizer_s": finished - backward_done}
        return {**timings, **self.stats()}

    def eval(self) -> dict:
        """Forward-only scoring of one batch of loglikelihood requests (as an lm-eval model call does).

        Gradients are freed first: an evaluation does not hold a training step's memory.
        """
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        self._sync()
        started = time.perf_counter()
        with torch.inference_mode():
            scores = score_requests(self.family, self._forward(input_ids=self.batch["input_ids"]).logits, self.batch)
        self._sync()
        seconds = time.perf_counter() - started
        self.model.train()
        return {"seconds": seconds, "requests": scores.shape[0], **self.stats()}

    def adamw(self) -> dict:
        """Seconds of one AdamW step per kernel (for-loop, foreach, fused) on this model's gradients.

        Drops the benchmark's own optimizer first (its state would add to the memory peak): ask last.
        """
        if any(p.grad is None for p in self.model.parameters()):
            self.train()
        self.optimizer = None
        timings = {}
        for kernel in ADAMW_KERNELS:
            optimizer = self._adamw(kernel)
            optimizer.step()  # creates the state
            self._sync()
            started = time.perf_counter()
            optimizer.step()
            self._sync()
            timings[kernel] = time.perf_counter() - started
            del optimizer
        return timings

    def stats(self) -> dict:
        peak = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        if self.device.type == "cuda":
            peak["peak_device_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return peak


def main() -> None:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    worker = Worker(json.loads(sys.argv[1]))
    replies.write(json.dumps(worker.ready()) + "\n")
    commands = {"train": worker.train, "eval": worker.eval, "adamw": worker.adamw, "stats": worker.stats}
    for line in sys.stdin:
        replies.write(json.dumps(commands[line.strip()]()) + "\n")


if __name__ == "__main__":
    main()
