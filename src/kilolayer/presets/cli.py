"""``kilolayer presets`` (list them) and ``kilolayer info`` (what a preset builds: size, build and step time)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    presets = subparsers.add_parser("presets", help="list the shipped presets")
    presets.set_defaults(func=run_presets)

    info = subparsers.add_parser(
        "info",
        help="describe the model a preset builds: parameters, and optionally build and step time",
        description="Resolve a preset (plus --config / --set) and print the model it describes. "
        "Parameters are counted on the meta device, so even GPT-1k answers instantly.",
    )
    add_config_arguments(info)
    info.add_argument("--build", action="store_true", help="also build the model for real and time it")
    info.add_argument(
        "--step", metavar="BxT", help="also time one forward+backward on a random batch, e.g. 8x64 (implies --build)"
    )
    info.set_defaults(func=run_info)


def add_config_arguments(
    parser: argparse.ArgumentParser, default_preset: str | None = "gpt-1k-cpu", required: bool = False, preset_help: str = ""
) -> None:
    """The three layers of configuration (preset → --config → --set) every command that builds a model accepts."""
    from . import list_presets

    parser.add_argument(
        "--preset", default=default_preset, required=required,
        help=preset_help or f"a preset name ({', '.join(list_presets())}) or a YAML file with model and train sections",
    )
    parser.add_argument("--config", metavar="FILE", help="a YAML file whose model/train keys override the preset's")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set train.lr=3e-4 --set model.num_layers=200 (repeatable; applied last)",
    )


def run_presets(args) -> int:
    from . import PRESET_DIR, list_presets

    for name in list_presets():
        first_line = (PRESET_DIR / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
        print(f"{name:14s} {first_line.lstrip('# ')}")
    return 0


def run_info(args) -> int:
    import time

    import torch

    from ..errors import KiloError
    from ..modeling import PRETRAINING_CLASSES
    from . import build_model_config, resolve_config

    config = build_model_config(resolve_config(args.preset, args.config, args.overrides)["model"])
    model_class = PRETRAINING_CLASSES[config.arch]
    with torch.device("meta"):
        parameters = sum(p.numel() for p in model_class(config).parameters())
    print(config.summary())
    print(f"parameters: {parameters:,} ({parameters / 1e6:.1f}M)")
    if not (args.build or args.step):
        return 0

    torch.set_flush_denormal(True)
    start = time.perf_counter()
    model = model_class(config)
    print(f"build: {time.perf_counter() - start:.2f} s")
    if args.step:
        try:
            batch, length = (int(part) for part in args.step.lower().split("x"))
        except ValueError:
            raise KiloError(f"--step {args.step!r}: expected BATCHxLENGTH, e.g. 8x64") from None
        input_ids = torch.randint(0, config.vocab_size, (batch, length))
        inputs = {"input_ids": input_ids, "labels": input_ids}
        if config.is_encoder_decoder:  # the shapes span corruption makes of windows of `length` tokens
            from ..data.span_corruption import span_counts

            noise, spans = span_counts(length)
            targets = torch.randint(0, config.vocab_size, (batch, noise + spans + 1))
            inputs = {"input_ids": input_ids[:, : length - noise + spans + 1], "decoder_input_ids": targets, "labels": targets}
        for label in ("first step", "second step"):
            start = time.perf_counter()
            model(**inputs).loss.backward()
            print(f"{label} (forward+backward, {batch}x{length}): {time.perf_counter() - start:.2f} s")
    return 0
