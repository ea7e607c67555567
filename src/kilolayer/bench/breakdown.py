"""Where a kilolayer training step's time goes, by kind of operator (torch.profiler, one step after warm-up).

    python -m kilolayer.bench.breakdown --family gpt --size 1000x64

Prints the share of the step spent in matmuls (and how fast they ran against the model FLOPs),
attention, elementwise activations, norms, the loss, the optimizer and everything else, with the
top operators. The matmul share bounds what any per-layer work can still win.
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from .models import BATCH, LENGTH, add_model_arguments, training_flops, training_setup, training_step

CATEGORIES = (  # first match wins: (category, substrings of ATen operator names)
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention kernel", ("scaled_dot_product", "flash_attention")),
    ("optimizer", ("adam",)),
    ("loss (softmax, gather)", ("softmax", "nll_loss", "logsumexp", "gather", "scatter")),
    ("layer norm", ("layer_norm",)),
    ("activation (GELU)", ("gelu", "sigmoid", "tanh")),
    ("elementwise and copies", ("aten::add", "aten::mul", "aten::sub", "aten::div", "copy_", "fill_", "aten::sum", "addcmul", "aten::cat", "clone")),
)


def categorise(name: str) -> str:
    for category, patterns in CATEGORIES:
        if any(pattern in name for pattern in patterns):
            return category
    return "other (views, autograd engine, allocation)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--top", type=int, default=8, help="top operators listed (default 8)")
    args = parser.parse_args(argv)
    model, optimizer, batch = training_setup(args)
    for _ in range(2):
        training_step(model, optimizer, batch)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        training_step(model, optimizer, batch)
    events = [event for event in profiler.key_averages() if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in events)  # microseconds
    by_category = collections.Counter()
    for event in events:
        by_category[categorise(event.key)] += event.self_cpu_time_total
    flops = training_flops(args.family, args.size, BATCH, LENGTH)
    print(f"{args.family} {args.size.label}, {args.threads} threads: one profiled step, {total / 1e6:.2f} s of operator time")
    for category, micros in by_category.most_common():
        extra = f"  ({flops / (micros / 1e6) / 1e9:.0f} GFLOP/s on the model FLOPs)" if category == "matmul" else ""
        print(f"  {category:44s} {micros / 1e6:6.2f} s  {micros / total:6.1%}{extra}")
    print("top operators:")
    for event in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[: args.top]:
        print(f"  {event.key:44s} {event.self_cpu_time_total / 1e6:6.3f} s  {event.count:6d} calls")


if __name__ == "__main__":
    main()
