"""binary_metrics agrees with scikit-learn (label 1 positive, zero_division=0)."""

from __future__ import annotations

import random

import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from kilolayer.eval.metrics import binary_metrics

generator = random.Random(0)
CASES = {
    "random": ([generator.randint(0, 1) for _ in range(101)], [generator.randint(0, 1) for _ in range(101)]),
    "all negative predictions": ([1, 0, 1, 1, 0], [0, 0, 0, 0, 0]),
    "all positive predictions": ([1, 0, 1, 1, 0], [1, 1, 1, 1, 1]),
    "perfect": ([0, 1, 1, 0], [0, 1, 1, 0]),
    "no positive labels": ([0, 0, 0], [0, 1, 0]),
}


@pytest.mark.parametrize("labels, predictions", CASES.values(), ids=CASES.keys())
def test_equals_scikit_learn(labels, predictions):
    ours = binary_metrics(labels, predictions)
    assert ours["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert ours["precision"] == pytest.approx(precision_score(labels, predictions, pos_label=1, zero_division=0))
    assert ours["recall"] == pytest.approx(recall_score(labels, predictions, pos_label=1, zero_division=0))
    assert ours["f1"] == pytest.approx(f1_score(labels, predictions, pos_label=1, zero_division=0))
    assert ours["examples"] == len(labels)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="3 labels but 2 predictions"):
        binary_metrics([0, 1, 1], [0, 1])
