"""LR schedules: values at known steps."""

import math

import pytest

from kilolayer.train.config import TrainConfig
from kilolayer.train.schedule import learning_rate, lr_factor


def config(schedule: str, **overrides) -> TrainConfig:
    values = {"lr": 1e-3, "warmup_steps": 10, "max_steps": 110, "min_lr_ratio": 0.1, **overrides}
    return TrainConfig(schedule=schedule, **values)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "inverse_sqrt", "constant"])
def test_linear_warmup_reaches_the_peak_on_its_last_step(schedule):
    c = config(schedule)
    assert lr_factor(c, 0) == pytest.approx(0.1)
    assert lr_factor(c, 4) == pytest.approx(0.5)
    assert lr_factor(c, 9) == pytest.approx(1.0)


def test_cosine_decays_to_the_floor():
    c = config("cosine")
    assert lr_factor(c, 10) == pytest.approx(1.0)
    assert lr_factor(c, 60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way: cos(π/2) = 0
    assert lr_factor(c, 110) == pytest.approx(0.1)
    assert lr_factor(c, 500) == pytest.approx(0.1)  # past max_steps it stays at the floor


def test_linear_decays_to_the_floor():
    c = config("linear")
    assert lr_factor(c, 35) == pytest.approx(1 - 0.9 * 0.25)
    assert lr_factor(c, 110) == pytest.approx(0.1)


def test_inverse_sqrt_and_constant():
    assert lr_factor(config("inverse_sqrt"), 39) == pytest.approx(math.sqrt(10 / 40))
    assert lr_factor(config("inverse_sqrt", warmup_steps=0), 3) == pytest.approx(0.5)
    assert lr_factor(config("constant"), 10_000) == 1.0


def test_no_warmup_starts_at_the_peak_and_rollbacks_scale_the_lr():
    c = config("cosine", warmup_steps=0)
    assert lr_factor(c, 0) == pytest.approx(1.0)
    assert learning_rate(c, 0, lr_scale=0.25) == pytest.approx(2.5e-4)


def test_decay_steps_sets_the_horizon_apart_from_max_steps():
    c = config("cosine", max_steps=500, decay_steps=110)
    assert lr_factor(c, 60) == pytest.approx(0.55) and lr_factor(c, 300) == pytest.approx(0.1)


def test_an_extended_resume_continues_the_lr_without_a_jump(corpus, tmp_path):
    """60 → 200 steps under cosine used to jump the LR from its floor back up (max_steps was the horizon)."""
    from trainkit import tiny_config

    from kilolayer.train.loop import train
    from kilolayer.train.metrics import read_metrics

    out = tmp_path / "run"
    options = {"schedule": "cosine", "warmup_steps": 2, "lr": 1e-3, "min_lr_ratio": 0.1, "eval_every": 0, "diagnostics_every": 0}
    train(tiny_config(corpus, max_steps=6, checkpoint_every=3, **options), out, progress=False)
    train(tiny_config(corpus, max_steps=10, checkpoint_every=3, **options), out, progress=False)  # the same run, extended
    lrs = {r["step"]: r["lr"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"}
    assert sorted(lrs) == list(range(1, 11))
    horizon = TrainConfig(**{**options, "max_steps": 6})  # the schedule the run started with
    assert [lrs[step] for step in range(1, 11)] == pytest.approx([learning_rate(horizon, step - 1) for step in range(1, 11)])
    assert lrs[7] < lrs[6] and [lrs[step] for step in range(7, 11)] == pytest.approx([1e-4] * 4)  # the floor, not back up
