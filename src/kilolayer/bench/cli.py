"""``kilolayer bench``: training and evaluation throughput, memory and MFU of kilolayer vs HF transformers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import KiloError
from . import BATCH, LENGTH

DEFAULT_SIZES = "1000x64,1000x256,12x768"


def register(subparsers) -> None:
    bench = subparsers.add_parser(
        "bench",
        help="tokens/s, MFU, eval requests/s, peak memory and build time: kilolayer vs HF transformers",
        description="Benchmarks kilolayer pre_ln GPT vs GPT2LMHeadModel and post_ln BERT vs BertForMaskedLM at "
        "identical shapes, interleaving the two step by step in separate processes so that the ratios hold on "
        "a loaded machine. Prints a Markdown table and writes JSON.",
    )
    bench.add_argument(
        "--sizes", default=DEFAULT_SIZES,
        help=f"comma-separated LAYERSxHIDDEN[xHEADS] (default {DEFAULT_SIZES}; heads 2/1/12 for widths 64/256/768)",
    )
    bench.add_argument("--families", default="gpt,bert", help="comma-separated: gpt, bert (default both)")
    bench.add_argument("--steps", type=_positive_int, help="measured training steps per model (median; default 5, quick 2)")
    bench.add_argument("--warmup", type=_non_negative_int, help="unmeasured steps first (default 2, quick 1)")
    bench.add_argument("--eval-batches", type=_positive_int, help="measured eval batches per model (default 3, quick 1)")
    bench.add_argument("--quick", action="store_true", help="defaults for a fast look: 2 steps after 1 warm-up, 1 eval batch")
    bench.add_argument("--batch", type=_positive_int, default=BATCH, help=f"sequences per step (default {BATCH})")
    bench.add_argument("--length", type=_positive_int, default=LENGTH, help=f"tokens per sequence (default {LENGTH})")
    bench.add_argument("--threads", type=_positive_int, help="torch threads in every process (default torch's)")
    bench.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast (default fp32)")
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    bench.add_argument(
        "--checkpointing", choices=("auto", "on", "off"), default="auto",
        help="activation checkpointing on both sides; auto: on when layers x hidden >= 256000 (GPT-1k)",
    )
    bench.add_argument("--compile", action="store_true", help="torch.compile kilolayer's blocks (one shared compiled code)")
    bench.add_argument(
        "--optimizer", choices=("fused", "foreach", "for-loop"), default="fused",
        help="AdamW kernel on both sides (default fused, as the trainer uses)",
    )
    bench.add_argument(
        "--hf-as-shipped", action="store_true",
        help="leave denormals unflushed in the HF processes, as HF runs out of the box (default: flushed on both "
        "sides, the same conditions; kilolayer's trainer always flushes them)",
    )
    bench.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON report (default bench.json)")
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .models import FAMILIES, Size
    from .report import notes, table, write_json
    from .throughput import BenchOptions, run_bench

    families = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise KiloError(f"--families: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(FAMILIES)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise KiloError("--device cuda: no CUDA device is available; use --device cpu")
    options = BenchOptions(
        sizes=[Size.parse(text) for text in args.sizes.split(",") if text.strip()],
        families=families,
        steps=args.steps or (2 if args.quick else 5),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        eval_batches=args.eval_batches or (1 if args.quick else 3),
        batch=args.batch,
        length=args.length,
        precision=args.precision,
        device=args.device,
        checkpointing=args.checkpointing,
        compile=args.compile,
        optimizer=args.optimizer,
        hf_flush_denormal=not args.hf_as_shipped,
    )
    if args.threads:
        options.threads = args.threads
    report = run_bench(options, log=lambda message: print(message, file=sys.stderr, flush=True))
    write_json(report, args.out)
    print(table(report))
    print()
    print(notes(report))
    print(f"\nwrote {args.out}")
    failed = [f"{r['family']} {r['size']} {side}" for r in report["results"] for side in ("kilolayer", "hf") if "error" in r[side]]
    return 1 if failed else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value
