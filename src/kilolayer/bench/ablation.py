"""What each training-step optimisation is worth: A/B on one model, interleaved step by step.

    python -m kilolayer.bench.ablation --family gpt --size 1000x64 --rounds 5

Each variant switches one optimisation off on the same model and weights, without changing the
library: the native one-kernel tanh-GELU instead of the sigmoid form (module swap), the loss over
full logits instead of the fused head (the ``fused_loss`` switch off), no reused
logits buffer. Variants and the full model take turns, so each ratio is measured under the same
machine load. Prints one line per variant: median step seconds and the change against "all on".
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from torch import nn

from ..modeling.layers import TanhGelu
from .models import add_model_arguments, training_setup, training_step


@contextlib.contextmanager
def native_gelu(model):
    """The FFNs' activation as ``nn.GELU(approximate="tanh")``, the one-kernel native tanh-GELU."""
    blocks = [block for block in model.model.layers if isinstance(block.ffn.act, TanhGelu)]
    for block in blocks:
        block.ffn.act = nn.GELU(approximate="tanh")
    yield
    for block in blocks:
        block.ffn.act = TanhGelu()


@contextlib.contextmanager
def full_logits(model):
    """The loss computed from the full (tokens x vocabulary) logits: the ``fused_loss`` switch off."""
    model.config.fused_loss = False
    yield
    model.config.fused_loss = True


@contextlib.contextmanager
def fresh_logits_buffer(model):
    """The fused loss without the reused logits buffer (a fresh allocation every step)."""
    workspace, model.logits_workspace = model.logits_workspace, None
    yield
    model.logits_workspace = workspace


VARIANTS = {
    "native tanh-GELU": (native_gelu, "gpt"),
    "loss over full logits": (full_logits, "gpt bert"),
    "fresh logits buffer": (fresh_logits_buffer, "gpt"),
}


def step_seconds(model, optimizer, batch) -> float:
    started = time.perf_counter()
    training_step(model, optimizer, batch)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (median; default 5)")
    args = parser.parse_args(argv)
    model, optimizer, batch = training_setup(args)
    variants = {name: switch for name, (switch, families) in VARIANTS.items() if args.family in families.split()}
    samples: dict[str, list[float]] = {"all on": [], **{name: [] for name in variants}}
    for round_index in range(args.rounds + 1):  # round 0 warms every variant up
        for name in samples:
            switch = variants.get(name)
            with switch(model) if switch else contextlib.nullcontext():
                seconds = step_seconds(model, optimizer, batch)
            if round_index:
                samples[name].append(seconds)
    baseline = statistics.median(samples["all on"])
    print(f"{args.family} {args.size.label}, {args.threads} threads, median of {args.rounds} interleaved rounds")
    for name, values in samples.items():
        median = statistics.median(values)
        change = "" if name == "all on" else f"  ({median - baseline:+.3f} s, {median / baseline - 1:+.1%} without this optimisation)"
        print(f"  {name:24s} {median:.3f} s{change}")


if __name__ == "__main__":
    main()
