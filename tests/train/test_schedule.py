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
