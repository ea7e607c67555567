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


def test_the_divergence_flag_follows_the_smoothed_loss_not_one_spike():
    guard = StabilityGuard(TrainConfig(divergence_factor=2.0))
    assert guard.check(1, 4.0, 1.0) == ("step", [])
    assert guard.check(2, 9.0, 1.0) == ("step", [])  # one spike: smoothed 4.5, below 2 × 4
    flagged = [event for step in range(3, 40) for event in guard.check(step, 12.0, 1.0)[1]]  # a sustained rise
    assert flagged[0]["event"] == "divergence" and guard.state.flagged_at == flagged[0]["step"] > 3
    assert guard.state.reference_loss == 4.0 and not guard.diverged  # a warning, not a stop
    cleared = [event for step in range(40, 80) for event in guard.check(step, 4.5, 1.0)[1]]
    assert cleared[0]["event"] == "divergence_cleared" and guard.state.flagged_at is None


def test_a_rollback_resets_the_reference():
    guard = StabilityGuard(TrainConfig(divergence_factor=2.0))
    for step in range(1, 30):
        guard.check(step, 2.0 if step < 10 else 5.0, 1.0)
    assert guard.state.flagged_at is not None
    guard.rolled_back()
    assert guard.check(30, 5.0, 1.0) == ("step", []) and guard.state.reference_loss == 5.0


def test_old_checkpoints_guard_state_loads():
    state = StabilityGuard.state_from({"consecutive_bad": 0, "skipped_steps": 2, "rollbacks": 0, "lr_scale": 1.0, "running_min": 3.0})
    assert state.skipped_steps == 2 and state.reference_loss is None


def test_a_flagged_run_still_exports_its_weights(corpus, tmp_path):
    result = train(tiny_config(corpus, max_steps=3, divergence_factor=0.5), tmp_path / "run", progress=False)  # flags at once
    assert result.flagged_at == 1 and not result.diverged
    assert result.export_dir is not None and (result.export_dir / "model.safetensors").is_file()
    assert "divergence flag up since step 1" in (result.export_dir / "README.md").read_text()


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
