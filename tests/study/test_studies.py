"""End to end through the real ``kilolayer study`` command and training engine, at 2-4 layers × 32 for a few steps."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kilolayer.cli import main
from kilolayer.study.budget import count_parameters

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FEW_STEPS = [
    "--preset", "gpt-tiny", "--no-progress",
    "--set", "train.max_steps=4", "--set", "train.eval_every=2", "--set", "train.eval_batches=2",
    "--set", "train.diagnostics_every=2", "--set", "train.checkpoint_every=2",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("study_cache")  # conftest.py: one cache for the module


@pytest.fixture(scope="module")
def data_args() -> list[str]:
    """The real held-out Wikipedia file (0.6 MB) when the reference data is there, else the embedded default corpus."""
    corpus = Path(os.environ.get("KILOLAYER_DATA", REPO.parent / "shared" / "data")) / "corpus" / "enwiki_valid.txt"
    return ["--data", str(corpus)] if corpus.is_file() else []


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path


def test_a_2x2x1_grid_writes_csv_png_and_markdown(tmp_path, data_args):
    out = tmp_path / "grid"
    status = main(["study", "stability", *FEW_STEPS, *data_args, "--schemes", "post_ln,foundation_ln", "--depths", "2,4", "--lrs", "1e-3", "--jobs", "2", "--control", "pre_ln:2", "--out", str(out)])
    assert status == 0
    rows = read_rows(out / "results.csv")
    assert sorted((row["scheme"], row["depth"]) for row in rows) == [
        ("foundation_ln", "2"), ("foundation_ln", "4"), ("post_ln", "2"), ("post_ln", "4"), ("pre_ln", "2")
    ]  # fmt: skip
    assert [row["is_control"] for row in rows].count("True") == 1
    study = json.loads((out / "study.json").read_text())
    assert 0 < study["baselines"]["bigram"] < study["baselines"]["unigram"]
    for row in rows:
        assert row["lr"] == "0.001" and row["steps"] == "4"
        assert math.isfinite(float(row["final_valid_loss"])) and float(row["final_valid_loss"]) < 2 * float(row["start_loss"])
        assert float(row["grad_norm_first_end"]) > 0 and float(row["update_norm_last_end"]) > 0
        assert row["verdict"] in ("learning", "underused", "plateau", "collapsed", "diverged") and row["context_gain"] != ""
        assert 0 <= float(row["live_fraction"]) <= 1
    curves = read_rows(out / "curves.csv")
    assert {row["curve"] for row in curves} >= {"train_loss", "valid_loss", "grad_norm_first", "grad_norm_last", "update_norm_first", "update_norm_last"}
    for name in ("stability_map.png", "loss_1.png", "grad_norm_1.png", "update_norm_1.png", "depth_profile_1.png"):
        assert_png(out / name)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Reading" in report and "![stability map](stability_map.png)" in report
    assert sum(line.startswith(("| post_ln |", "| foundation_ln |", "| pre_ln |")) for line in report.splitlines()) == 5
    assert "Shallow control `pre_ln` at 2 layers" in report


def test_an_absurd_learning_rate_is_marked_divergent_not_crashed(tmp_path, data_args):
    out = tmp_path / "divergent"
    status = main(["study", "stability", *FEW_STEPS, *data_args, "--schemes", "post_ln", "--depths", "2", "--lrs", "1e3", "--control", "off", "--out", str(out)])
    assert status == 0
    (row,) = read_rows(out / "results.csv")
    assert row["diverged"] == "True" and row["status"] == "diverged" and row["verdict"] == "diverged"
    assert row["divergence"] in ("nonfinite", "loss_above_start") and int(row["diverged_at"]) >= 1
    assert "**diverged**" in (out / "report.md").read_text(encoding="utf-8")
    assert_png(out / "stability_map.png")


def worker_processes(study_dir: Path) -> list[int]:
    """Ids of live cell workers of this study (a worker's command line names its cell folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and "kilolayer.study.worker" in command and str(study_dir) in command:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; workers die with the study through a Linux prctl")
def test_a_killed_study_resumes_without_rerunning_finished_cells(tmp_path, data_args):
    out = tmp_path / "killed"
    arguments = ["study", "stability", *FEW_STEPS, *data_args, "--schemes", "post_ln,pre_ln", "--depths", "2,4", "--lrs", "1e-3", "--jobs", "1", "--control", "pre_ln:2", "--out", str(out)]
    study = subprocess.Popen([sys.executable, "-m", "kilolayer", *arguments], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not list(out.glob("cells/*/result.json")):
        assert study.poll() is None, study.stderr.read().decode()
        assert time.monotonic() < deadline, "no cell finished in 10 minutes"
        time.sleep(0.2)
    study.send_signal(signal.SIGKILL)
    study.wait()
    finished = {path: path.stat().st_mtime_ns for path in out.glob("cells/*/result.json")}
    assert 1 <= len(finished) < 4, "the kill must land mid-study"
    deadline = time.monotonic() + 30
    while worker_processes(out):  # the running cell dies with the study (PR_SET_PDEATHSIG)
        assert time.monotonic() < deadline, "a cell worker outlived the killed study"
        time.sleep(0.2)

    assert main(arguments) == 0
    assert {path: path.stat().st_mtime_ns for path in finished} == finished  # finished cells were not re-run
    for path in finished:
        starts = [line for line in (path.parent / "run" / "metrics.jsonl").read_text().splitlines() if '"event": "start"' in line]
        assert len(starts) == 1
    assert len(read_rows(out / "results.csv")) == 4


def test_the_depth_study_keeps_the_parameter_budget_and_marks_the_best_depth(tmp_path, data_args):
    out = tmp_path / "depth"
    status = main(["study", "depth", *FEW_STEPS, *data_args, "--depths", "1,2,4", "--jobs", "2", "--out", str(out)])
    assert status == 0
    study = json.loads((out / "study.json").read_text())
    budget = count_parameters(study["base"]["model"])  # gpt-tiny with the corpus tokenizer's vocabulary
    rows = read_rows(out / "results.csv")
    assert sorted(int(row["depth"]) for row in rows) == [1, 2, 4]
    for row in rows:
        achieved = int(row["parameters"])  # counted by the engine on the model it trained
        assert abs(achieved - budget) / budget < 0.05, row
        assert int(row["hidden_size"]) % 4 == 0  # 2 heads, even head size for rotary positions
    assert len({row["hidden_size"] for row in rows}) == 3  # deeper is narrower
    assert_png(out / "depth_curve.png")
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "within" in report and "Baselines on the same" in report
    assert {row["verdict"] for row in rows} <= {"collapsed", "plateau"}  # 4 steps leave every depth above the unigram baseline
    assert "No depth learned from its input beyond the unigram baseline" in report
