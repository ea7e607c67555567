"""Exact resume: a run SIGKILLed mid-training and resumed continues bitwise identically on CPU."""

import signal
import time

import torch
from trainkit import events, run_training, start_training, step_losses, tiny_config
from safetensors.torch import load_file

from kilolayer.train.loop import train
from kilolayer.train.metrics import read_metrics


def final_weights(out_dir, step):
    return load_file(out_dir / "checkpoints" / f"step-{step:08d}" / "model.safetensors")


def kill_after_checkpoint(process, out_dir, step, timeout=120):
    """SIGKILL the run as soon as its checkpoint of ``step`` is logged (it is mid-way through later steps by then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        records = read_metrics(out_dir / "metrics.jsonl")
        if any(r["kind"] == "event" and r["event"] == "checkpoint" and r["step"] >= step for r in records):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    return process.returncode


def test_sigkill_and_resume_is_bitwise_identical(corpus, tmp_path):
    # Dropout on, so the restored RNG states matter too; the kill lands after the checkpoint of step 8.
    config = tiny_config(corpus, model={"hidden_dropout": 0.1, "attention_dropout": 0.1}, max_steps=24, checkpoint_every=8, eval_every=8)
    reference = run_training(config, tmp_path / "reference")

    interrupted = tmp_path / "interrupted"
    process = start_training(config, interrupted)
    assert kill_after_checkpoint(process, interrupted, step=8) == -signal.SIGKILL
    killed_at = max(step_losses(interrupted))
    assert killed_at < 24, "the run finished before the kill; the test proved nothing"

    resumed = run_training(config, interrupted)
    assert resumed["steps"] == 24
    assert events(interrupted, "resume")[0]["step"] >= 8
    assert step_losses(interrupted) == step_losses(tmp_path / "reference")
    valid = lambda out: [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "valid"]  # noqa: E731
    assert valid(interrupted) == valid(tmp_path / "reference")
    expected, actual = final_weights(tmp_path / "reference", 24), final_weights(interrupted, 24)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert resumed["validation"] == reference["validation"]


def test_resume_with_more_steps_continues_the_same_run(corpus, tmp_path):
    """max_steps may grow on resume (a resumable key); the run goes on from its last checkpoint."""
    out = tmp_path / "run"
    train(tiny_config(corpus, max_steps=8), out, progress=False)
    result = train(tiny_config(corpus, max_steps=12), out, progress=False)
    assert result.steps == 12
    assert sorted(step_losses(out)) == list(range(1, 13))
    assert [e["step"] for e in events(out, "resume")] == [8]


def test_resume_keeps_the_loss_path_the_run_was_started_with(corpus, tmp_path):
    """A run started with ``model.fused_loss=False`` (what runs from before the switch stored) resumes on that path
    when the command does not choose one, instead of being refused as a different run."""
    out = tmp_path / "run"
    train(tiny_config(corpus, model={"fused_loss": False}, max_steps=8), out, progress=False)
    result = train(tiny_config(corpus, max_steps=12), out, progress=False)
    assert result.steps == 12
    assert "fused_loss: false" in (out / "config.yaml").read_text()
