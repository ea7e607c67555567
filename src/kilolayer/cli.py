"""The ``kilolayer`` command. Each area registers its own subcommands; heavy imports happen inside them.

Parsing imports neither torch nor transformers, so ``--help`` answers at once and the thread policy
(``kilolayer.threads``) is applied before torch starts its OpenMP threads.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import KiloError
from .threads import apply_thread_policy

# Each module defines ``register(subparsers)``, adding parsers whose ``func(args)`` runs the command.
COMMAND_MODULES = (
    "kilolayer.presets.cli",
    "kilolayer.data.cli",
    "kilolayer.train.cli",
    "kilolayer.eval.cli",
    "kilolayer.study.cli",
    "kilolayer.bench.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kilolayer",
        description="Build, train and evaluate very deep (1,000-layer) BERT and GPT models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command in subparsers.choices.values():
        if not any("--threads" in action.option_strings for action in command._actions):
            command.add_argument(
                "--threads", type=_positive_int, metavar="N",
                help="CPU threads (default: the cores the machine's load leaves free; OMP_NUM_THREADS also sets it)",
            )
    return parser


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.thread_choice = apply_thread_policy(args.threads)
    try:
        return int(args.func(args) or 0)
    except KiloError as error:
        print(f"kilolayer {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kilolayer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
