"""Binary classification metrics for GLUE QQP/MRPC, label 1 (duplicate / paraphrase) positive.

Written out rather than imported from scikit-learn so fine-tuning does not need it; the tests
check these against scikit-learn. Precision or recall with an empty denominator is 0 (as
scikit-learn's ``zero_division=0``), so a model that never predicts 1 gets F1 0, not an error.
"""

from __future__ import annotations

from collections.abc import Sequence


def binary_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """{"accuracy", "precision", "recall", "f1", "examples"} with label 1 as the positive class."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise ValueError("no examples to score")
    pairs = list(zip((int(label) for label in labels), (int(prediction) for prediction in predictions)))
    true_positive = sum(1 for label, prediction in pairs if label == 1 and prediction == 1)
    predicted_positive = sum(1 for _, prediction in pairs if prediction == 1)
    actual_positive = sum(1 for label, _ in pairs if label == 1)
    precision = true_positive / predicted_positive if predicted_positive else 0.0
    recall = true_positive / actual_positive if actual_positive else 0.0
    return {
        "accuracy": sum(1 for label, prediction in pairs if label == prediction) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "examples": len(pairs),
    }
