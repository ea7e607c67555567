"""``kilolayer pretrain``: resolve a preset (+ config file + --set overrides) and train it (one process or torchrun)."""

from __future__ import annotations

import argparse

EXIT_DIVERGED = 1
EXIT_SIGNAL = 130  # the shell's code for an interrupted command

EPILOG = """\
examples:
  kilolayer pretrain --preset gpt-1k-cpu
  kilolayer pretrain --preset gpt-tiny --set train.max_steps=50 --out runs/try
  kilolayer pretrain --preset bert-1k-cpu --data ../shared/data/corpus/enwiki_train.txt
  torchrun --nproc_per_node=2 -m kilolayer pretrain --preset gpt-tiny --set train.distributed=fsdp

Run folder (--out): config.yaml (the full resolved config), metrics.jsonl, tensorboard/,
checkpoints/, loss_curve.png and model/ (an HF folder with a model card). Rerunning the same
command continues from the newest valid checkpoint; Ctrl-C saves a checkpoint and exits.
"""


def register(subparsers) -> None:
    from ..presets.cli import add_config_arguments

    parser = subparsers.add_parser(
        "pretrain",
        help="pretrain a deep GPT or BERT from a preset",
        description="Pretrain a deep GPT (causal LM) or BERT (masked LM): tokenizer, token shards, training with "
        "checkpoints, the stability guard and per-layer diagnostics, then an exported HF model folder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, default_preset=None, required=True)
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="a .txt/.jsonl corpus file or folder (same as --set train.data=PATH; default: $KILOLAYER_DATA/corpus, "
        "else the embedded Python-stdlib corpus)",
    )
    parser.add_argument("--out", metavar="DIR", help="the run folder (default: runs/<preset name>)")
    parser.add_argument(
        "--resume",
        default="auto",
        metavar="auto|never|PATH",
        help="auto (default): continue from the newest valid checkpoint in --out, or start when there is none; "
        "never: refuse an --out that already holds a run; PATH: continue from that checkpoint folder",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or banner (logs are still written)")
    parser.set_defaults(func=pretrain_command)


def pretrain_command(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from ..presets import resolve_config
    from ..study.verdicts import MIN_CONTEXT_GAIN
    from .loop import train

    config = resolve_config(args.preset, args.config, args.overrides)
    preset_name = Path(args.preset).stem
    config["train"].setdefault("preset", preset_name)
    if args.data:
        config["train"]["data"] = args.data
    out = Path(args.out) if args.out else Path("runs") / preset_name
    result = train(config, out, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return EXIT_DIVERGED if result.diverged else EXIT_SIGNAL if result.stopped_by == "signal" else 0
    if result.stopped_by == "signal":
        if result.checkpoint is not None:
            saved = f"checkpoint {result.checkpoint} holds step {result.steps}; rerun the same command to continue"
        else:
            saved = f"no checkpoint was saved (train.checkpoint_every=0), so this run cannot be continued; its logs are in {out}"
        print(f"kilolayer pretrain: interrupted at step {result.steps}; {saved}", file=sys.stderr)
        return EXIT_SIGNAL

    def loss(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    print(
        f"{result.steps} steps ({result.stopped_by}) in {result.wall_seconds:,.0f} s, {result.tokens_per_second:,.0f} tokens/s; "
        f"train loss {loss(result.final_train_loss)}, valid loss {loss(result.final_valid_loss)} (best {loss(result.best_valid_loss)}); "
        f"{result.skipped_steps} skipped steps, {result.rollbacks} rollbacks"
    )
    print(f"run folder {out}: metrics.jsonl, tensorboard/, loss_curve.png, checkpoints/" + (", model/" if result.export_dir else ""))
    context_gain = (result.validation or {}).get("context_gain")
    if context_gain is not None and context_gain < MIN_CONTEXT_GAIN:
        print(
            f"kilolayer pretrain: note: context gain {context_gain:.3f} nats (validation loss with shuffled inputs minus with "
            f"its own): the model barely uses its input yet, so a low loss is word frequencies, not language modelling; "
            f"see docs/study-cpu.md for which schemes learn at this depth",
            file=sys.stderr,
        )
    if result.flagged_at is not None:
        print(
            f"kilolayer pretrain: warning: the smoothed loss is far above its best since step {result.flagged_at} (divergence flag); "
            f"the last weights are exported all the same; see the events in {result.metrics_path}",
            file=sys.stderr,
        )
    if result.diverged:
        print(f"kilolayer pretrain: the run stopped on a non-finite loss at step {result.diverged_at}; see the events in {result.metrics_path}", file=sys.stderr)
        return EXIT_DIVERGED
    return 0
