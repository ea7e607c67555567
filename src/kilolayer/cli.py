"""The ``kilolayer`` command. Each area registers its own subcommands; heavy imports happen inside them."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import KiloError

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
