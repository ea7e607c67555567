"""Count-based baselines on a study's own data: what a model must beat before it has learned anything.

A language model that ignores its input can at best predict the unigram distribution; one that
uses only the previous token can at best reach a bigram model. Both are fitted here on the train
shard (an encoder-decoder's unigram on its train batches' targets) by counting and scored on exactly
the validation targets the engine scores (the first ``eval_batches`` validation batches; for GPT
every token of a window but the first), in nats per target, the unit of the engine's validation loss.

Smoothing is add-λ: p(c) = (n(c) + λ) / (N + λV) and p(c | p) = (n(p, c) + λ) / (n(p) + λV).
λ is chosen from ``LAMBDAS`` on the last ``HELD_OUT_FRACTION`` of the train shard (fitted on the
rest), then the counts are refitted on the whole train shard: the validation set never chooses λ.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LAMBDAS = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
HELD_OUT_FRACTION = 0.1
SPAN_FIT_BATCHES = 2000  # encoder-decoder: train batches whose targets the unigram is counted on


@dataclass(frozen=True)
class Baselines:
    """Cross-entropies (nats per validation target) of the count models, and what they were fitted on."""

    unigram: float
    bigram: float | None  # None for masked LM: a bidirectional task has no "previous token" model
    unigram_lambda: float
    bigram_lambda: float | None
    train_tokens: int
    valid_targets: int

    def to_dict(self) -> dict:
        return asdict(self)


def unigram_cross_entropy(train: np.ndarray, targets: np.ndarray, vocab_size: int, smoothing: float) -> float:
    """Mean −log p(target) under add-λ unigram counts of ``train``."""
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64)
    log_probs = np.log(counts + smoothing) - math.log(len(train) + smoothing * vocab_size)
    return float(-log_probs[targets].mean())


def _pair_codes(previous: np.ndarray, current: np.ndarray, vocab_size: int) -> np.ndarray:
    return previous.astype(np.int64) * vocab_size + current.astype(np.int64)


def bigram_cross_entropy(train: np.ndarray, contexts: np.ndarray, targets: np.ndarray, vocab_size: int, smoothing: float) -> float:
    """Mean −log p(target | context token) under add-λ bigram counts of ``train``.

    Pairs are counted sparsely (``np.unique`` over pair codes), so a 50k vocabulary costs memory in the
    number of distinct pairs seen, not V².
    """
    train = np.asarray(train)
    codes, pair_counts = np.unique(_pair_codes(train[:-1], train[1:], vocab_size), return_counts=True)
    context_counts = np.bincount(train[:-1], minlength=vocab_size).astype(np.float64)
    queries = _pair_codes(contexts, targets, vocab_size)
    where = np.searchsorted(codes, queries)
    found = (where < len(codes)) & (codes[np.minimum(where, len(codes) - 1)] == queries)
    seen = np.where(found, pair_counts[np.minimum(where, len(codes) - 1)], 0).astype(np.float64)
    log_probs = np.log(seen + smoothing) - np.log(context_counts[contexts] + smoothing * vocab_size)
    return float(-log_probs.mean())


def _choose_lambda(score, train: np.ndarray) -> float:
    """The λ of ``LAMBDAS`` with the lowest cross-entropy on the train shard's held-out tail."""
    cut = int(len(train) * (1 - HELD_OUT_FRACTION))
    fit, held_out = train[:cut], train[cut:]
    return min(LAMBDAS, key=lambda smoothing: score(fit, held_out, smoothing))


def causal_baselines(train: np.ndarray, windows: np.ndarray, vocab_size: int) -> Baselines:
    """Unigram and bigram baselines for next-token prediction on ``windows`` (rows of consecutive tokens).

    The scored targets are ``windows[:, 1:]``, each predicted from the token before it (the bigram) or
    from nothing (the unigram): the targets of the engine's causal validation loss.
    """
    train = np.asarray(train, dtype=np.int64)
    windows = np.asarray(windows, dtype=np.int64)
    contexts, targets = windows[:, :-1].ravel(), windows[:, 1:].ravel()
    unigram_lambda = _choose_lambda(lambda fit, held, s: unigram_cross_entropy(fit, held, vocab_size, s), train)
    bigram_lambda = _choose_lambda(lambda fit, held, s: bigram_cross_entropy(fit, held[:-1], held[1:], vocab_size, s), train)
    return Baselines(
        unigram=unigram_cross_entropy(train, targets, vocab_size, unigram_lambda),
        bigram=bigram_cross_entropy(train, contexts, targets, vocab_size, bigram_lambda),
        unigram_lambda=unigram_lambda,
        bigram_lambda=bigram_lambda,
        train_tokens=len(train),
        valid_targets=len(targets),
    )


def masked_baselines(train: np.ndarray, labels: np.ndarray, vocab_size: int) -> Baselines:
    """The unigram baseline of masked-token (or span-corruption) prediction: the scored targets are the labels ≠ -100."""
    train = np.asarray(train, dtype=np.int64)
    targets = np.asarray(labels, dtype=np.int64).ravel()
    targets = targets[targets != -100]
    unigram_lambda = _choose_lambda(lambda fit, held, s: unigram_cross_entropy(fit, held, vocab_size, s), train)
    return Baselines(
        unigram=unigram_cross_entropy(train, targets, vocab_size, unigram_lambda),
        bigram=None,
        unigram_lambda=unigram_lambda,
        bigram_lambda=None,
        train_tokens=len(train),
        valid_targets=len(targets),
    )


def study_baselines(prepared, train_config) -> Baselines:
    """The baselines of a study's data, on the validation batches its cells are scored on.

    ``prepared`` is the study's ``PreparedData``; ``train_config`` its ``TrainConfig``. The batches are the
    engine's validation batches: seed 0 whatever the run's seed, the first ``eval_batches`` of them.
    """
    valid = prepared.batches("valid", train_config.batch_size, train_config.seq_len, 0)
    batches = [valid.get_batch(index) for index in range(train_config.eval_batches)]
    vocab_size = len(prepared.tokenizer)
    train = np.asarray(prepared.shards.train)
    if prepared.arch == "gpt":
        windows = np.concatenate([batch["input_ids"].numpy() for batch in batches])
        return causal_baselines(train, windows, vocab_size)
    labels = np.concatenate([batch["labels"].numpy().ravel() for batch in batches])
    if prepared.arch == "encdec":
        # Span-corruption targets hold sentinels and EOS, which the raw train shard never does: count the targets
        # of the train batches instead (up to SPAN_FIT_BATCHES of them).
        train_batches = prepared.batches("train", train_config.batch_size, train_config.seq_len, 0)
        count = min(len(train_batches), SPAN_FIT_BATCHES)
        train = np.concatenate([train_batches.get_batch(index)["labels"].numpy().ravel() for index in range(count)])
    return masked_baselines(train, labels, vocab_size)
