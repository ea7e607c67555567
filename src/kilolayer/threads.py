"""The CPU thread policy of every kilolayer process (CLI, training, study cells, benchmarks).

Deep narrow models do thousands of tiny matrix products per step, and torch's OpenMP threads
spin-wait between them. On an idle machine N threads are the fastest; on a busy one the spinning
threads fight the other processes for the cores and a step can get 40-60× slower. The policy:

* wait policy ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning), unless the user set
  one. OpenMP reads it once, when torch is imported: ``apply_thread_policy`` must run before that;
* threads = the cores left free by the other processes, round(cpus − load), clamped to [1, cpus],
  with the 1-minute load average as the measure of what else runs. An idle machine gets every core,
  a busy one a single thread;
* an explicit ``OMP_NUM_THREADS`` (or ``--threads``, which sets it) always wins.

This module imports nothing heavy: the CLI calls it before torch exists in the process.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

WAIT_POLICY = "PASSIVE"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    wait_policy: str | None  # OMP_WAIT_POLICY; None: unset, torch's threads spin (a process not started by the CLI)
    reason: str  # why this many threads: "OMP_NUM_THREADS", "--threads" or the load it was chosen under

    def describe(self) -> str:
        """The run banner's line, e.g. ``1 thread (load 3.1 on 2 CPUs), OMP_WAIT_POLICY=PASSIVE``."""
        plural = "s" if self.threads != 1 else ""
        waiting = f"OMP_WAIT_POLICY={self.wait_policy}" if self.wait_policy else "OMP_WAIT_POLICY unset (threads spin-wait)"
        return f"{self.threads} thread{plural} ({self.reason}), {waiting}"


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask in a container, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float:
    """Runnable processes averaged over the last minute (0 where the OS does not say)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def threads_for_load(cpus: int, load: float) -> int:
    """The cores the other processes leave free: round(cpus − load), at least 1, at most cpus."""
    return max(1, min(cpus, round(cpus - load)))


def choose_threads(explicit: int | None = None, environ: dict | None = None) -> ThreadChoice:
    """What ``apply_thread_policy`` would set, without setting it: explicit > $OMP_NUM_THREADS > the load rule."""
    environ = os.environ if environ is None else environ
    wait_policy = environ.get("OMP_WAIT_POLICY") or None
    if explicit is not None:
        return ThreadChoice(explicit, wait_policy, "--threads")
    given = environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return ThreadChoice(int(given), wait_policy, "OMP_NUM_THREADS")
    cpus, load = available_cpus(), load_average()
    return ThreadChoice(threads_for_load(cpus, load), wait_policy, f"load {load:.1f} on {cpus} CPUs")


_applied: ThreadChoice | None = None  # what apply_thread_policy set in this process


def apply_thread_policy(explicit: int | None = None) -> ThreadChoice:
    """Set OMP_NUM_THREADS and OMP_WAIT_POLICY for this process and its children (study cells, bench workers).

    Call it before torch is imported; if torch is already loaded, its thread count is set too (the wait
    policy then applies only to child processes).
    """
    import sys

    choice = choose_threads(explicit)
    choice = dataclasses.replace(choice, wait_policy=choice.wait_policy or WAIT_POLICY)
    os.environ["OMP_NUM_THREADS"] = str(choice.threads)
    os.environ["OMP_WAIT_POLICY"] = choice.wait_policy
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(choice.threads)
    global _applied
    _applied = choice
    return choice


def current_policy() -> ThreadChoice:
    """The threads this process runs with: the CLI's choice (and why) if it still holds, else ``choose_threads()``."""
    if _applied is not None and os.environ.get("OMP_NUM_THREADS") == str(_applied.threads):
        return _applied
    return choose_threads()
