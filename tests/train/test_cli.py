"""`kilolayer pretrain`: the real command in a subprocess (progress, SIGTERM, resume) and its input errors."""

import signal
import subprocess
import sys
import time

import pytest
from trainkit import events, step_losses

from kilolayer.cli import main


def pretrain_args(corpus, out, *extra):
    sets = ["train.max_steps=16", "train.checkpoint_every=4", "train.log_every=1", "train.eval_every=8", "train.eval_batches=2"]
    return ["pretrain", "--preset", "gpt-tiny", "--data", str(corpus), "--out", str(out), *[f"--set={s}" for s in sets], *extra]


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = capsys.readouterr().out
    for option in ("--preset", "--config", "--set", "--data", "--out", "--resume", "gpt-1k-cpu", "torchrun"):
        assert option in text


def test_sigterm_saves_and_exits_then_the_same_command_finishes(corpus, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "kilolayer", *pretrain_args(corpus, out, "--set=train.max_steps=400")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not events(out, "checkpoint")[1:]:  # past the step-0 checkpoint
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted at step" in stderr
    stopped = max(step_losses(out))
    assert stopped < 400 and events(out, "checkpoint")[-1]["step"] == stopped

    more = f"--set=train.max_steps={stopped + 4}"  # max_steps may change on resume
    finished = subprocess.run([sys.executable, "-m", "kilolayer", *pretrain_args(corpus, out, more, "--no-progress")], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert f"{stopped + 4} steps (max_steps)" in finished.stdout
    assert sorted(step_losses(out)) == list(range(1, stopped + 5))
    for name in ("config.yaml", "metrics.jsonl", "loss_curve.png", "model/model.safetensors", "model/README.md", "model/tokenizer.json"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())


def error_of(capsys, *args) -> str:
    assert main(list(args)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kilolayer pretrain: error: "), lines
    return lines[0]


def snapshot(folder):
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_a_config_typo_fails_before_anything_is_written(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert "did you mean lr" in error_of(capsys, *pretrain_args(corpus, out, "--set", "train.lrr=0.1"))
    assert "unknown model key" in error_of(capsys, *pretrain_args(corpus, out, "--set", "model.num_layer=3"))
    assert "unknown preset" in error_of(capsys, "pretrain", "--preset", "gpt-2k", "--out", str(out))
    assert not out.exists()


def test_an_existing_run_is_never_overwritten(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_args(corpus, out, "--set", "train.max_steps=4", "--no-progress")) == 0
    capsys.readouterr()
    before = snapshot(out)
    assert "train.lr=0.001 (this config: 0.002)" in error_of(capsys, *pretrain_args(corpus, out, "--set", "train.lr=2e-3"))
    assert "already holds a run" in error_of(capsys, *pretrain_args(corpus, out, "--resume", "never"))
    assert "no such checkpoint folder" in error_of(capsys, *pretrain_args(corpus, out, "--resume", str(tmp_path / "nowhere")))
    assert snapshot(out) == before

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    assert "holds no kilolayer run" in error_of(capsys, *pretrain_args(corpus, foreign))
    assert snapshot(foreign) == {foreign / "cat.jpg": b"meow"}


def test_bad_data_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "empty.txt" in error_of(capsys, *pretrain_args(empty, tmp_path / "run"))
    assert "run" not in {path.name for path in tmp_path.iterdir()}


@pytest.mark.slow
def test_ctrl_c_with_checkpoints_off_says_so_and_the_rerun_keeps_the_logs(corpus, tmp_path):
    out = tmp_path / "run"
    args = pretrain_args(corpus, out, "--set=train.max_steps=400", "--set=train.checkpoint_every=0")
    process = subprocess.Popen([sys.executable, "-m", "kilolayer", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not step_losses(out):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "no checkpoint was saved (train.checkpoint_every=0)" in stderr and "rerun" not in stderr
    assert not (out / "checkpoints").exists()
    before = snapshot(out)

    rerun = subprocess.run([sys.executable, "-m", "kilolayer", *args], capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 2 and "has no checkpoint to continue from" in rerun.stderr, rerun.stderr[-2000:]
    assert snapshot(out) == before  # metrics.jsonl and the rest untouched
