"""TrainConfig: typos, types and invalid values are one-line KiloErrors."""

import pytest

from kilolayer.errors import KiloError
from kilolayer.train.config import TrainConfig


def test_yaml_strings_are_coerced():
    config = TrainConfig.from_dict({"lr": "3e-4", "max_steps": 5.0, "grad_clip": None})
    assert (config.lr, config.max_steps, config.grad_clip) == (3e-4, 5, None)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"learning_rate": 1e-3}, "unknown train key 'learning_rate'"),
        ({"schedul": "cosine"}, "did you mean schedule"),
        ({"max_steps": "many"}, "must be a int"),
        ({"max_steps": 2.5}, "must be an integer"),
        ({"activation_checkpointing": "yes"}, "true or false"),
        ({"schedule": "exponential"}, "must be one of cosine"),
        ({"precision": "fp16"}, "must be one of fp32, bf16"),
        ({"batch_size": 0}, "'batch_size' must be ≥ 1"),
        ({"lr": 0}, "'lr' must be > 0"),
        ({"adam_beta2": 1.0}, "'adam_beta2' must be in (0, 1)"),
        ({"max_minutes": -1}, "'max_minutes' must be > 0"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(KiloError, match=None) as caught:
        TrainConfig.from_dict(values)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
