"""Fault injection for the tests of the guard and the checkpoint writer, driven by one environment variable.

``KILOLAYER_FAULTS="nan_grad@5,9*3;kill_in_checkpoint@20"``:

* ``nan_grad@S`` or ``S*K``: after the backward pass of optimizer step S (1-based), one gradient is filled
  with NaN, on the first attempt at step S (or the first K attempts: a skipped step is retried on the
  next batch under the same number). Later attempts, e.g. after a rollback, run clean.
* ``kill_in_checkpoint@S``: the process SIGKILLs itself while writing the checkpoint of step S,
  after the data files and before the manifest and the rename: a torn write, as a power cut leaves.

Unset (always, outside tests) it does nothing.
"""

from __future__ import annotations

import os
import signal

import torch

from ..errors import KiloError

ENV = "KILOLAYER_FAULTS"
KINDS = ("nan_grad", "kill_in_checkpoint")


def _parse(text: str) -> dict[str, dict[int, int]]:
    """{kind: {step: remaining firings}}."""
    faults: dict[str, dict[int, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        kind, _, steps = item.partition("@")
        try:
            faults[kind] = {int(step): int(times or 1) for step, _, times in (entry.partition("*") for entry in steps.split(","))}
        except ValueError:
            faults[kind] = {}
        if kind not in KINDS or not faults[kind]:
            raise KiloError(f"{ENV}: cannot read {item!r}; expected kind@step[*times][,step…] with kind one of {', '.join(KINDS)}")
    return faults


class Faults:
    """The faults still to fire in this process."""

    def __init__(self):
        self.pending = _parse(os.environ.get(ENV, ""))

    def _fire(self, kind: str, step: int) -> bool:
        remaining = self.pending.get(kind, {})
        if remaining.get(step, 0) > 0:
            remaining[step] -= 1
            return True
        return False

    def poison_gradients(self, step: int, parameters: list[torch.nn.Parameter]) -> None:
        if self._fire("nan_grad", step):
            next(p for p in parameters if p.grad is not None).grad.fill_(float("nan"))

    def kill_in_checkpoint(self, step: int) -> None:
        if self._fire("kill_in_checkpoint", step):
            os.kill(os.getpid(), signal.SIGKILL)
