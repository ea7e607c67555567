"""A cell's verdict, read against baselines on the same data: did the model learn, or only not diverge?

Not diverging is not learning. A model that ignores its input can reach the unigram cross-entropy
and no lower; a stack whose blocks all write the same input-independent vector does exactly that.
So every cell is classified from four numbers measured on the study's own validation batches:

* ``diverged``: the loss became non-finite, or the smoothed training loss ended above its start
  (``metrics.find_divergence``);
* ``collapsed``: finite, but not using its input: context gain (validation loss with each sequence's
  context taken from another sequence, minus with its own) below ``MIN_CONTEXT_GAIN``;
* ``plateau``: uses its input (context gain above the threshold), but its final validation loss is
  not at least ``MIN_GAIN_OVER_UNIGRAM`` below the unigram cross-entropy: not clearly learning yet,
  a different failure from a collapse (often a model that is only slower than the control);
* ``learning``: below the unigram baseline by the margin, context gain above the threshold, and at
  least ``MIN_LIVE_FRACTION`` of the blocks with a gradient RMS above Adam's ε at the last diagnostics;
* ``underused``: learning from its input, but with most of the depth idle (fewer live blocks than
  ``MIN_LIVE_FRACTION``): the first layers receive no gradient Adam can see.

``beats_shallow``: a learning cell whose validation loss is ``MIN_GAIN_OVER_SHALLOW`` below the study's
shallow control (a 12-layer Pre-LN model trained with the same budget, data and order).

The thresholds, from the committed CPU study (``docs/study-cpu.md``: 1000 × 32 GPT, 512-token BPE,
200 steps of 16 × 32 tokens). All cells are scored on the same validation targets as the baselines, so
the comparisons are paired; what varies is training. Three seeds of the 12-layer Pre-LN control ended
within 0.008 nats of each other (5.076, 5.081, 5.084) with context gains of 0.43-0.46 nats, 0.28 nats
below unigram (5.364). 0.10 nats is more than ten times that seed spread, and under a tenth of the
unigram-to-bigram gap (5.36 → 3.85 nats), so a cell that passes it has learned something that
depends on its input; the context-gain threshold uses the same number (an input-independent model
scores exactly 0: ``train/diagnostics.context_shuffled``). 90 % of blocks: a 1000-layer model with
100 dead blocks is still mostly a deep model; with fewer live blocks than that its depth is not being
used.
"""

from __future__ import annotations

import math

DIVERGED, COLLAPSED, PLATEAU, UNDERUSED, LEARNING = "diverged", "collapsed", "plateau", "underused", "learning"
MIN_GAIN_OVER_UNIGRAM = 0.10  # nats
MIN_CONTEXT_GAIN = 0.10  # nats
MIN_LIVE_FRACTION = 0.90
MIN_GAIN_OVER_SHALLOW = 0.02  # nats: more than twice the control's seed spread (0.008 nats)


def classify(row: dict, unigram: float) -> tuple[str, str]:
    """(verdict, the numbers behind it in words) of one cell's result row."""
    if row.get("diverged"):
        return DIVERGED, f"diverged ({row.get('divergence')}) at step {row.get('diverged_at')}"
    loss, gain, live = row.get("final_valid_loss"), row.get("context_gain"), row.get("live_fraction")
    if loss is None or not math.isfinite(loss):
        return DIVERGED, "no finite validation loss"
    below_unigram = unigram - loss
    side = "below" if below_unigram >= 0 else "above"
    facts = f"{abs(below_unigram):.3f} nats {side} unigram, context gain {_number(gain)}"
    if gain is None or not gain >= MIN_CONTEXT_GAIN:
        return COLLAPSED, facts
    if below_unigram < MIN_GAIN_OVER_UNIGRAM:
        return PLATEAU, facts
    facts += f", {_percent(live)} of blocks live"
    if live is None or live < MIN_LIVE_FRACTION:
        return UNDERUSED, facts
    return LEARNING, facts


def beats_shallow(row: dict, verdict: str, control_loss: float | None) -> bool | None:
    """Does a learning (or underused) cell beat the shallow control? None when there is nothing to compare."""
    if control_loss is None or verdict not in (LEARNING, UNDERUSED) or row.get("is_control"):
        return None
    return row["final_valid_loss"] <= control_loss - MIN_GAIN_OVER_SHALLOW


def control_learned(control_loss: float | None, unigram: float) -> bool:
    """Does the shallow control clear the unigram baseline? If not, the budget is too small to compare schemes."""
    return control_loss is not None and math.isfinite(control_loss) and unigram - control_loss >= MIN_GAIN_OVER_UNIGRAM


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"
