"""``kilolayer study stability`` and ``kilolayer study depth``: the depth laboratory's two commands."""

from __future__ import annotations

import argparse

from ..presets.cli import add_config_arguments

ARCH_PRESETS = {"gpt": "gpt-1k-cpu", "bert": "bert-1k-cpu", "encdec": "encdec-1k-cpu"}


def register(subparsers) -> None:
    study = subparsers.add_parser("study", help="stability map and optimal-depth studies (grids of short training runs)")
    commands = study.add_subparsers(dest="study_command", required=True, metavar="STUDY")

    stability = commands.add_parser(
        "stability",
        help="which schemes train at which depth, learning rate, warmup and clipping",
        description="Train one short run per cell of schemes × depths × LRs (× warmups × clips) with the same data, "
        "seed and step budget; write results.csv, curves.csv, stability_map.png, loss/grad/update-norm curves and "
        "report.md. Re-running the same command resumes: finished cells are skipped.",
    )
    _common_arguments(stability, "studies/stability-{arch}")
    stability.add_argument("--schemes", default="all", help="comma-separated scheme names, or all (default: all)")
    stability.add_argument("--depths", default="6,24,96,384,1000", help="comma-separated layer counts (default: 6,24,96,384,1000)")
    stability.add_argument("--lrs", default="1e-3,3e-3,1e-2", help="comma-separated peak learning rates (default: 1e-3,3e-3,1e-2)")
    stability.add_argument("--warmups", help="comma-separated warmup step counts (default: the preset's train.warmup_steps)")
    stability.add_argument("--clips", help="comma-separated gradient-clipping norms, 'off' for none (default: the preset's train.grad_clip)")
    stability.add_argument(
        "--report-only", action="store_true",
        help="run nothing: write the report from the cells finished so far (safe while the study runs)",
    )  # fmt: skip
    stability.add_argument("--seeds", help="comma-separated seeds; each combination runs once per seed (default: the preset's train.seed)")
    stability.add_argument(
        "--control", default="pre_ln:12",
        help="the shallow control SCHEME:DEPTH trained beside every LR/warmup/clip/seed combination, against which cells "
        "are judged; 'off' for none (default: pre_ln:12)",
    )  # fmt: skip
    stability.set_defaults(func=stability_command)

    depth = commands.add_parser(
        "depth",
        help="validation loss against depth at a fixed parameter (or FLOPs) budget",
        description="For each depth, derive the width (a multiple of the head count) and FFN size that keep the "
        "parameter budget, train the same run, and write results.csv, depth_curve.png and report.md. "
        "Re-running the same command resumes: finished depths are skipped.",
    )
    _common_arguments(depth, "studies/depth-{arch}")
    depth.add_argument("--depths", default="6,24,96,384,1000", help="comma-separated layer counts (default: 6,24,96,384,1000)")
    depth.add_argument("--params", type=float, help="parameter budget, e.g. 50e6 (default: the preset model's own count)")
    depth.add_argument(
        "--flops", type=float,
        help="training-FLOPs budget (≈ 6 · params · tokens): each depth's step count is set from it (default: the preset's train.max_steps at every depth)",
    )  # fmt: skip
    depth.add_argument("--zero-shot", help="GPT only: comma-separated zero-shot tasks to score each trained model on (piqa,winogrande,hellaswag,lambada_openai)")
    depth.add_argument("--zero-shot-limit", type=int, help="score only the first N examples of each task (faster, noisier)")
    depth.add_argument("--data-dir", help="reference data folder with eval/ for --zero-shot (default: $KILOLAYER_DATA)")
    depth.set_defaults(func=depth_command)

    probe = subparsers.add_parser(
        "probe",
        help="how many of a trained model's layers matter: drop-one loss, angular distance, context gain",
        description="Measure an exported model folder on fixed windows of a text file: the loss increase when each "
        "block is replaced by the identity, the angle each block turns the residual stream by, and the context gain "
        "(loss with another sequence's context minus with its own). Writes probe.json and probe.png.",
    )
    probe.add_argument("model_dir", help="a model folder written by save_pretrained (a training run's model/)")
    probe.add_argument("--data", help="a UTF-8 .txt file to probe on (default: $KILOLAYER_DATA/corpus/enwiki_valid.txt)")
    probe.add_argument("--windows", type=int, default=16, help="text windows to score (default: 16)")
    probe.add_argument("--seq-len", type=int, help="tokens per window (default: the model's positions, at most 64)")
    probe.add_argument("--stride", type=int, default=1, help="drop every STRIDE-th layer only (default: 1, every layer)")
    probe.add_argument("--out", help="output folder (default: MODEL_DIR/probe)")
    probe.add_argument("--no-progress", action="store_true", help="no progress bar")
    probe.set_defaults(func=_probe)

    from .signal import register_signal

    register_signal(commands)


def _probe(args: argparse.Namespace) -> int:
    from .probe import probe_command

    return probe_command(args)


def _common_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument(
        "--arch", choices=sorted(ARCH_PRESETS),
        help="gpt (causal LM), bert (masked LM) or encdec (encoder-decoder, span corruption; a depth is encoder + decoder "
        "layers, split evenly): picks the default preset (default: gpt, or the --preset's)",
    )  # fmt: skip
    add_config_arguments(
        parser, default_preset=None,
        preset_help="base preset or YAML file (default: gpt-1k-cpu; bert-1k-cpu with --arch bert, encdec-1k-cpu with --arch encdec)",
    )  # fmt: skip
    parser.add_argument("--data", help="corpus file or folder (default: $KILOLAYER_DATA/corpus, else the embedded default)")
    parser.add_argument("--out", help=f"study folder; re-running into it resumes (default: {default_out})")
    parser.add_argument("--threads-per-cell", type=int, default=1, help="torch threads of each cell's process (default: 1)")
    parser.add_argument("--jobs", type=int, help="cells run at once (default: one per GPU, else available CPUs / threads per cell)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(default_out=default_out)


def _settings(args: argparse.Namespace):
    """(base config, out folder, jobs) from the arguments every study shares."""
    from pathlib import Path

    from ..errors import KiloError
    from ..paths import check_writable_folder
    from .runner import default_jobs
    from .shared import base_config

    if args.out:
        check_writable_folder(Path(args.out), "--out")  # before the corpus is tokenized
    base = base_config(args.preset or ARCH_PRESETS[args.arch or "gpt"], args.config, args.data, args.overrides)
    arch = base["model"]["arch"]
    if args.arch and arch != args.arch:
        raise KiloError(f"the preset is a {arch} model but --arch is {args.arch}; pass --arch {arch} or another preset")
    if args.threads_per_cell < 1 or (args.jobs is not None and args.jobs < 1):
        raise KiloError("--jobs and --threads-per-cell must be at least 1")
    out = Path(args.out or args.default_out.format(arch=arch))
    check_writable_folder(out, "--out")  # the default folder
    return base, out, args.jobs or default_jobs(args.threads_per_cell)


def _split(text: str, convert, name: str) -> tuple:
    from ..errors import KiloError

    try:
        values = tuple(dict.fromkeys(convert(item.strip()) for item in text.split(",") if item.strip()))  # no duplicate cells
    except ValueError:
        raise KiloError(f"--{name} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise KiloError(f"--{name} is empty")
    return values


def _clip(text: str) -> float | None:
    return None if text.lower() in ("off", "none") else float(text)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _control(text: str, schemes) -> tuple[str, int] | None:
    """--control SCHEME:DEPTH (or off) as (scheme, depth)."""
    from ..errors import KiloError

    if text.lower() in ("off", "none"):
        return None
    scheme, _, depth = text.partition(":")
    if scheme not in schemes or not depth.isdigit() or int(depth) < 1:
        raise KiloError(f"--control {text!r}: expected SCHEME:DEPTH with a known scheme, e.g. pre_ln:12, or off")
    return scheme, int(depth)


def stability_command(args: argparse.Namespace) -> int:
    from ..errors import KiloError
    from ..modeling import SCHEMES
    from .stability import StabilityGrid, run_stability

    base, out, jobs = _settings(args)
    schemes = tuple(SCHEMES) if args.schemes == "all" else _split(args.schemes, str, "schemes")
    unknown = [scheme for scheme in schemes if scheme not in SCHEMES]
    if unknown:
        raise KiloError(f"unknown scheme {', '.join(unknown)}; known schemes: {', '.join(SCHEMES)}")
    grid = StabilityGrid(
        schemes=schemes,
        depths=_split(args.depths, _positive_int, "depths"),
        lrs=_split(args.lrs, float, "lrs"),
        warmups=_split(args.warmups, int, "warmups") if args.warmups else (None,),
        clips=_split(args.clips, _clip, "clips") if args.clips else None,
        seeds=_split(args.seeds, int, "seeds") if args.seeds else (None,),
        control=_control(args.control, SCHEMES),
    )
    outcome = run_stability(base, grid, out, jobs, args.threads_per_cell, progress=not args.no_progress, report_only=args.report_only)
    return _summary(outcome, out)


def depth_command(args: argparse.Namespace) -> int:
    from ..errors import KiloError
    from ..paths import data_dir
    from .depth import run_depth

    base, out, jobs = _settings(args)
    if base["model"]["arch"] == "encdec":
        raise KiloError("study depth derives each depth's width from one block's parameters; it supports gpt and bert, "
                        "not encdec (use study stability --arch encdec)")
    zero_shot = None
    if args.zero_shot:
        import importlib.util

        from ..eval.zeroshot import data_files, parse_tasks

        if base["model"]["arch"] != "gpt":
            raise KiloError("--zero-shot scores continuations with a causal LM; it needs --arch gpt")
        if importlib.util.find_spec("lm_eval") is None:
            raise KiloError("--zero-shot needs lm-evaluation-harness: pip install 'kilolayer[eval]'")
        tasks = parse_tasks(args.zero_shot)
        reference = data_dir(args.data_dir)
        if reference is None:
            raise KiloError("--zero-shot needs the task files: give --data-dir or set KILOLAYER_DATA")
        data_files(tasks, reference)  # a missing task file fails now, not after training
        zero_shot = {"tasks": tasks, "limit": args.zero_shot_limit, "data_dir": str(reference.resolve())}
    outcome = run_depth(
        base,
        list(_split(args.depths, _positive_int, "depths")),
        int(args.params) if args.params else None,
        args.flops,
        zero_shot,
        out,
        jobs,
        args.threads_per_cell,
        progress=not args.no_progress,
    )
    return _summary(outcome, out)


def _summary(outcome, out) -> int:
    """One line per outcome; exit status 1 when cells failed (re-running the command retries them)."""
    diverged = sum(record["diverged"] for record in outcome.records)
    print(
        f"{len(outcome.records)} cells finished ({diverged} diverged; the verdicts against the baselines are in the report)"
        + (f", {len(outcome.pending)} not finished yet" if outcome.pending else "")
        + (f" → {out / 'report.md'}" if outcome.records else "")
    )
    for cell, message in outcome.failures.items():
        print(f"failed: {cell}: {message}")
    if outcome.failures:
        print(f"{len(outcome.failures)} cells failed; re-run the same command to retry them")
        return 1
    return 0
