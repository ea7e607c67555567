"""The thread policy: load → threads, explicit settings win, and it is applied before torch starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kilolayer import threads


@pytest.mark.parametrize(
    ("cpus", "load", "expected"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.8, 1), (2, 6.0, 1), (16, 3.2, 13), (16, 40.0, 1), (1, 0.0, 1)],
)
def test_threads_are_the_cores_the_load_leaves_free(cpus, load, expected):
    assert threads.threads_for_load(cpus, load) == expected


def test_explicit_threads_win_over_the_environment_and_the_load(monkeypatch):
    monkeypatch.setattr(threads, "load_average", lambda: 0.0)
    environ = {"OMP_NUM_THREADS": "3"}
    assert threads.choose_threads(5, environ).threads == 5
    assert threads.choose_threads(None, environ) == threads.ThreadChoice(3, None, "OMP_NUM_THREADS")
    assert threads.choose_threads(None, {**environ, "GOMP_SPINCOUNT": "0"}).wait == "GOMP_SPINCOUNT=0"
    chosen = threads.choose_threads(None, {})
    assert chosen.threads == threads.available_cpus() and chosen.reason.startswith("load 0.0")


def test_a_busy_machine_gets_one_thread_that_sleeps_when_idle(monkeypatch):
    monkeypatch.setattr(threads, "load_average", lambda: 50.0)
    assert threads.choose_threads(None, {}).threads == 1
    assert threads.wait_setting(1) == ("OMP_WAIT_POLICY", "PASSIVE")
    assert threads.wait_setting(2) == ("GOMP_SPINCOUNT", "10000")  # several threads spin briefly for the next kernel


def run_python(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OMP_")}
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**environment, **env}, timeout=120)
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.strip()


def test_the_cli_sets_threads_and_wait_policy_before_torch_is_imported():
    code = (
        "import os, sys\n"
        "from kilolayer.cli import build_parser\n"
        "from kilolayer.threads import apply_thread_policy\n"
        "args = build_parser().parse_args(['presets', '--threads', '1'])\n"
        "assert 'torch' not in sys.modules\n"
        "apply_thread_policy(args.threads)\n"
        "import torch\n"
        "print(torch.get_num_threads(), os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))\n"
    )
    assert run_python(code) == "1 PASSIVE None"  # one thread sleeps
    assert run_python(code.replace("'1'", "'2'")) == "2 None 10000"  # several spin briefly, then sleep
    assert run_python(code, OMP_WAIT_POLICY="ACTIVE") == "1 ACTIVE None"  # the user's wait setting is kept


def test_the_run_banner_reports_why_the_cli_chose_its_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "load_average", lambda: 50.0)
    monkeypatch.setattr(threads, "_applied", None)
    import torch

    before = torch.get_num_threads()
    try:
        applied = threads.apply_thread_policy()
        assert threads.current_policy() == applied and applied.reason.startswith("load 50.0")
    finally:
        torch.set_num_threads(before)
