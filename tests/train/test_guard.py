"""The stability guard: non-finite steps are skipped, repeated ones roll back with a lower LR, `stop` ends cleanly."""

import math

import pytest
from trainkit import events, step_losses, tiny_config

from kilolayer.train.config import TrainConfig
from kilolayer.train.guard import StabilityGuard
from kilolayer.train.loop import train
from kilolayer.train.metrics import read_metrics
from kilolayer.train.schedule import learning_rate


def test_one_nan_gradient_skips_that_step_only(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KILOLAYER_FAULTS", "nan_grad@5")
    result = train(tiny_config(corpus, max_steps=8), tmp_path / "run", progress=False)
    assert (result.steps, result.skipped_steps, result.rollbacks, result.diverged) == (8, 1, 0, False)
    skipped = events(tmp_path / "run", "skipped_step")
    assert [(e["step"], e["grad_norm"]) for e in skipped] == [(5, "nan")]
    assert sorted(step_losses(tmp_path / "run")) == list(range(1, 9))  # the step was retried on the next batch


def test_repeated_nan_gradients_roll_back_with_a_lower_lr_and_training_continues(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KILOLAYER_FAULTS", "nan_grad@6*3")  # step 6 fails three times in a row
    config = tiny_config(corpus, max_steps=10, checkpoint_every=4, max_bad_steps=3, rollback_lr_factor=0.5)
    result = train(config, tmp_path / "run", progress=False)
    assert (result.steps, result.skipped_steps, result.rollbacks, result.diverged) == (10, 3, 1, False)
    rollback = events(tmp_path / "run", "rollback")[0]
    assert (rollback["step"], rollback["to_step"], rollback["lr_scale"]) == (5, 4, 0.5)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    after = [r for r in records[records.index(next(r for r in records if r.get("event") == "rollback")) :] if r["kind"] == "train"]
    reference = TrainConfig.from_dict(config["train"])
    assert after[0]["step"] == 5 and after[0]["lr"] == pytest.approx(learning_rate(reference, 4, lr_scale=0.5))
    assert math.isfinite(result.final_train_loss)


def test_on_nonfinite_stop_ends_the_run_as_diverged(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("KILOLAYER_FAULTS", "nan_grad@3")
    result = train(tiny_config(corpus, max_steps=8, on_nonfinite="stop"), tmp_path / "run", progress=False)
    assert (result.steps, result.diverged, result.diverged_at, result.stopped_by) == (2, True, 3, "nonfinite")
    assert result.export_dir is None  # no model worth exporting
    assert (tmp_path / "run" / "loss_curve.png").is_file()


def test_divergence_is_flagged_and_cleared():
    guard = StabilityGuard(TrainConfig(divergence_factor=2.0))
    assert guard.check(1, 4.0, 1.0) == ("step", [])
    verdict, flagged = guard.check(2, 9.0, 1.0)
    assert verdict == "step" and flagged[0]["event"] == "divergence" and guard.diverged
    _, cleared = guard.check(3, 5.0, 1.0)
    assert cleared[0]["event"] == "divergence_cleared" and not guard.diverged


def test_rollbacks_are_limited():
    guard = StabilityGuard(TrainConfig(max_bad_steps=1, max_rollbacks=1))
    assert guard.check(1, math.nan, 1.0)[0] == "rollback"
    guard.rolled_back()
    assert guard.check(1, 1.0, math.inf)[0] == "stop"
    assert guard.state.diverged_at == 1 and guard.state.lr_scale == 0.5


def test_per_layer_diagnostics_are_logged(corpus, tmp_path):
    train(tiny_config(corpus, max_steps=4, diagnostics_every=2), tmp_path / "run", progress=False)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "diagnostics"]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        for name in ("grad_norm", "update_norm", "activation_rms"):
            summary = record[name]
            assert summary["min"] <= summary["median"] <= summary["max"]
            assert 0 <= summary["argmax"] < 4 and summary["min"] > 0
