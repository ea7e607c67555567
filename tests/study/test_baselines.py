"""The count baselines against a hand computation on a tiny corpus."""

import math

import numpy as np

from kilolayer.study.baselines import LAMBDAS, bigram_cross_entropy, causal_baselines, masked_baselines, unigram_cross_entropy

TRAIN = np.array([0, 1, 0, 1, 0, 2])  # counts: 0 ×3, 1 ×2, 2 ×1; pairs: (0,1) ×2, (1,0) ×2, (0,2) ×1


def test_unigram_by_hand():
    # add-1 over V = 4: p(0) = 4/10, p(1) = 3/10, p(3) = 1/10
    expected = -(math.log(4 / 10) + math.log(3 / 10) + math.log(1 / 10)) / 3
    assert math.isclose(unigram_cross_entropy(TRAIN, np.array([0, 1, 3]), 4, 1.0), expected)


def test_bigram_by_hand():
    # add-0.5 over V = 3: p(1|0) = (2 + .5)/(3 + 1.5), p(0|1) = (2 + .5)/(2 + 1.5), p(1|2) = .5/(0 + 1.5) (2 never a context)
    contexts, targets = np.array([0, 1, 2]), np.array([1, 0, 1])
    expected = -(math.log(2.5 / 4.5) + math.log(2.5 / 3.5) + math.log(0.5 / 1.5)) / 3
    assert math.isclose(bigram_cross_entropy(TRAIN, contexts, targets, 3, 0.5), expected)


def test_bigram_beats_unigram_on_a_predictable_stream_and_lambda_comes_from_training_data():
    rng = np.random.default_rng(0)
    stream = np.repeat(rng.integers(0, 50, 20_000), 2)  # every token is followed by itself once: the bigram knows half
    windows = np.repeat(rng.integers(0, 50, (8, 16)), 2, axis=1)
    found = causal_baselines(stream, windows, 50)
    assert found.bigram < found.unigram - 0.5
    assert math.isclose(found.unigram, math.log(50), rel_tol=0.02)  # uniform tokens
    assert found.unigram_lambda in LAMBDAS and found.bigram_lambda in LAMBDAS
    assert found.valid_targets == 8 * 31


def test_masked_baselines_score_only_the_masked_labels():
    labels = np.array([[-100, 0, -100], [1, -100, -100]])
    found = masked_baselines(TRAIN, labels, 3)
    assert found.bigram is None and found.valid_targets == 2
    assert math.isclose(found.unigram, unigram_cross_entropy(TRAIN, np.array([0, 1]), 3, found.unigram_lambda))
