"""Process-wide torch settings a CPU run needs, set when the run starts and restored when it ends.

* threads: the thread policy of ``kilolayer.threads`` (an explicit OMP_NUM_THREADS wins);
* flushing denormals to zero: deep narrow nets produce denormals, 6× slower on CPU without this.

A Python program that calls ``train`` twice, or trains and then does something else, gets its own
settings back afterwards.
"""

from __future__ import annotations

import torch

from ..threads import ThreadChoice, current_policy


def flushes_denormals() -> bool:
    """Whether denormals are flushed now (torch has a setter only): 1e-39 × 1 is 0 exactly when they are."""
    return (torch.tensor(1e-39, dtype=torch.float32) * 1.0).item() == 0.0


class ProcessSettings:
    """``apply()`` on a CPU run's start, ``restore()`` at its end (restore is safe to call more than once)."""

    def __init__(self, device: torch.device):
        self.on_cpu = device.type == "cpu"
        self.choice: ThreadChoice = current_policy()
        self.saved: tuple[int, bool] | None = None

    def apply(self) -> None:
        if self.on_cpu and self.saved is None:
            self.saved = (torch.get_num_threads(), flushes_denormals())
            torch.set_num_threads(self.choice.threads)
            torch.set_flush_denormal(True)

    def restore(self) -> None:
        if self.saved is not None:
            threads, flush = self.saved
            torch.set_num_threads(threads)
            torch.set_flush_denormal(flush)
            self.saved = None

    def describe(self) -> str:
        return self.choice.describe() if self.on_cpu else f"{torch.get_num_threads()} CPU threads (data and host work)"
