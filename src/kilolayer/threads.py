"""The CPU thread policy of every kilolayer process (CLI, training, study cells, benchmarks).

Deep narrow models do thousands of tiny matrix products per step, and torch's OpenMP threads
spin-wait between them. On an idle machine N threads are the fastest; on a busy one the spinning
threads fight the other processes for the cores and a step can get 40-60× slower. The policy:

* threads = the cores left free by the other processes, round(cpus − load), clamped to [1, cpus],
  with the 1-minute load average as the measure of what else runs. An idle machine gets every core,
  a busy one a single thread;
* how threads wait, set unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``: one thread
  sleeps (``OMP_WAIT_POLICY=PASSIVE``); several spin briefly, then sleep (``GOMP_SPINCOUNT=10000``).
  Measured on the gpt-1k-cpu step (docs/benchmarks.md), 2 threads on an idle 2-core machine: 2.4 s
  with the short spin, 6.3 s sleeping at once (every tiny kernel waits for its threads to wake),
  2.6 s with torch's long default spin, which under two busy processes became 17 s;
* OpenMP reads these once, when torch is imported: ``apply_thread_policy`` must run before that;
* an explicit ``OMP_NUM_THREADS`` (or ``--threads``, which sets it) always wins.

The choice is made once, at the start: a run that starts on an idle machine keeps its threads if
other work starts later.

This module imports nothing heavy: the CLI calls it before torch exists in the process.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
ONE_THREAD_WAIT = ("OMP_WAIT_POLICY", "PASSIVE")  # nothing to wait for: sleep
SEVERAL_THREADS_WAIT = ("GOMP_SPINCOUNT", "10000")  # spin ~10k iterations for the next tiny kernel, then sleep


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    wait: str | None  # the wait setting, "NAME=VALUE"; None: unset, torch's threads spin (a process not started by the CLI)
    reason: str  # why this many threads: "OMP_NUM_THREADS", "--threads" or the load it was chosen under

    def describe(self) -> str:
        """The run banner's line, e.g. ``1 thread (load 3.1 on 2 CPUs), OMP_WAIT_POLICY=PASSIVE``."""
        plural = "s" if self.threads != 1 else ""
        return f"{self.threads} thread{plural} ({self.reason}), {self.wait or 'OMP_WAIT_POLICY unset (threads spin-wait)'}"


def wait_setting(threads: int) -> tuple[str, str]:
    """(variable, value) of how ``threads`` threads should wait: one sleeps, several spin briefly."""
    return ONE_THREAD_WAIT if threads == 1 else SEVERAL_THREADS_WAIT


def user_wait(environ) -> str | None:
    """The wait setting the user gave (``NAME=VALUE``), if any."""
    given = [f"{name}={environ[name]}" for name in WAIT_VARIABLES if environ.get(name)]
    return ", ".join(given) or None


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
    wait = user_wait(environ)
    if explicit is not None:
        return ThreadChoice(explicit, wait, "--threads")
    given = environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return ThreadChoice(int(given), wait, "OMP_NUM_THREADS")
    cpus, load = available_cpus(), load_average()
    return ThreadChoice(threads_for_load(cpus, load), wait, f"load {load:.1f} on {cpus} CPUs")


_applied: ThreadChoice | None = None  # what apply_thread_policy set in this process


def apply_thread_policy(explicit: int | None = None) -> ThreadChoice:
    """Set OMP_NUM_THREADS and the wait setting for this process and its children (study cells, bench workers).

    Call it before torch is imported; if torch is already loaded, its thread count is set too (the wait
    setting then applies only to child processes).
    """
    import sys

    choice = choose_threads(explicit)
    if choice.wait is None:
        name, value = wait_setting(choice.threads)
        os.environ[name] = value
        choice = dataclasses.replace(choice, wait=f"{name}={value}")
    os.environ["OMP_NUM_THREADS"] = str(choice.threads)
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
