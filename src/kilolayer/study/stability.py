"""The stability map: which residual schemes train at which depth, learning rate, warmup and clipping.

Every cell is the same short training run (same data, tokenizer, seed and therefore data order, same
step budget) that differs only in its axes: scheme × depth × LR × warmup × gradient clipping (× seed).
The default budget stops a run at the first non-finite loss (``train.on_nonfinite: stop``), so a
divergent cell is recorded as such instead of being rescued by the training guard.

Each cell gets a verdict against baselines on the same validation batches (``verdicts.py``): the
unigram and bigram cross-entropies, and a shallow control (by default 12-layer ``pre_ln``) trained
with the same budget for every LR / warmup / clip / seed combination of the grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from ..presets import merge
from .report import (
    combination_label,
    divergence_detail,
    format_clip,
    format_lr,
    markdown_table,
    number,
    settings_section,
    stability_reading,
    write_csv,
)
from .metrics import START_MARGIN
from .verdicts import DIVERGED, beats_shallow, classify
from .runner import CELL_FILE, Cell, Outcome
from .shared import flatten, load_json, prepare_study, run_study, tokens_per_step

VARIED = {"model": ("scheme", "num_layers"), "train": ("lr", "warmup_steps", "grad_clip", "seed")}  # the grid's axes

CSV_COLUMNS = [
    "id", "scheme", "depth", "lr", "warmup", "clip", "seed", "is_control", "verdict", "beats_shallow", "status",
    "diverged", "divergence", "diverged_at", "steps", "start_loss", "final_train_loss", "final_valid_loss", "best_valid_loss",
    "below_unigram", "context_gain", "live_fraction", "used_blocks", "collapse_step",
    "grad_norm_first_start", "grad_norm_first_end", "grad_norm_last_start", "grad_norm_last_end",
    "update_norm_first_end", "update_norm_last_end", "parameters", "wall_seconds", "tokens_per_second",
]  # fmt: skip


@dataclass(frozen=True)
class StabilityGrid:
    """The axes of the map. A warmup or clip of None means: the base config's value."""

    schemes: tuple[str, ...]
    depths: tuple[int, ...]
    lrs: tuple[float, ...]
    warmups: tuple[int | None, ...] = (None,)
    clips: tuple[float | None, ...] | None = None  # None: the base config's clipping; a None entry: off
    seeds: tuple[int | None, ...] = (None,)  # None: the base config's seed
    control: tuple[str, int] | None = ("pre_ln", 12)  # the shallow control's (scheme, depth); None: no control


def cell_id(scheme: str, depth: int, lr: float, warmup: int, clip: float | None, seed: int, base_seed: int) -> str:
    """The cell's folder name; the seed appears only when it differs from the base config's (older studies keep their ids)."""
    suffix = f"_seed{seed}" if seed != base_seed else ""
    return f"{scheme}_L{depth}_lr{format_lr(lr)}_wu{warmup}_clip{format_clip(clip)}{suffix}"


def stability_cells(base: dict, grid: StabilityGrid) -> list[Cell]:
    """The grid's cells in table order: warmup, clip, LR, seed, scheme, depth (the heatmap's panels, rows, columns).

    The shallow control of each warmup / clip / LR / seed combination comes first in its group (the grid's own cell
    when the grid already holds that scheme and depth).
    """
    train = base["train"]
    warmups = [train["warmup_steps"] if warmup is None else warmup for warmup in grid.warmups]
    clips = [train["grad_clip"]] if grid.clips is None else list(grid.clips)
    clips = [None if not clip else clip for clip in clips]  # 0 disables clipping, as in TrainConfig
    seeds = [train["seed"] if seed is None else seed for seed in grid.seeds]
    cells = []
    for warmup, clip, lr, seed in itertools.product(warmups, clips, grid.lrs, seeds):
        pairs = list(itertools.product(grid.schemes, grid.depths))
        if grid.control is not None:
            pairs = [grid.control] + [pair for pair in pairs if pair != grid.control]
        for scheme, depth in pairs:
            axes = {
                "scheme": scheme, "depth": depth, "lr": lr, "warmup": warmup, "clip": clip, "seed": seed,
                "is_control": (scheme, depth) == grid.control,
            }  # fmt: skip
            cells.append(cell_from_axes(base, axes))
    return cells


def cell_from_axes(base: dict, axes: dict) -> Cell:
    """The cell that trains ``base`` with the axes' scheme, depth, LR, warmup, clipping and seed."""
    override = {
        "model": {"scheme": axes["scheme"], "num_layers": axes["depth"]},
        "train": {"lr": axes["lr"], "warmup_steps": axes["warmup"], "grad_clip": axes["clip"], "seed": axes["seed"]},
    }
    identity = cell_id(axes["scheme"], axes["depth"], axes["lr"], axes["warmup"], axes["clip"], axes["seed"], base["train"]["seed"])
    return Cell(identity, axes, merge(base, override))


def earlier_cells(out_dir: Path, base: dict, cells: list[Cell]) -> list[Cell]:
    """Cells an earlier run of this study folder holds beyond ``cells`` (another seed, scheme or LR), rebuilt from the
    current base: they join the table, and if the base changed since, ``check_unchanged`` refuses the run."""
    known = {cell.id for cell in cells}
    found = []
    for spec_path in sorted((out_dir / "cells").glob(f"*/{CELL_FILE}")):
        spec = load_json(spec_path)
        if spec["id"] not in known and {"seed", "is_control"} <= spec["axes"].keys():
            found.append(cell_from_axes(base, spec["axes"]))
    return found


def assign_verdicts(rows: list[dict], unigram: float) -> None:
    """Add verdict, its reason, the margin below unigram and ``beats_shallow`` to each row (``verdicts.py``)."""
    for row in rows:
        row["verdict"], row["verdict_detail"] = classify(row, unigram)
        loss = row.get("final_valid_loss")
        row["below_unigram"] = unigram - loss if loss is not None else None
    controls = {_group(row): row for row in rows if row.get("is_control")}
    for row in rows:  # a control may come after the cells it judges (cells of an earlier run come last)
        control = controls.get(_group(row))
        control_loss = control["final_valid_loss"] if control and control["verdict"] != DIVERGED else None
        row["control_loss"] = control_loss
        row["beats_shallow"] = beats_shallow(row, row["verdict"], control_loss)


def _group(row: dict) -> tuple:
    """The training settings a cell shares with its shallow control."""
    return (row["lr"], row["warmup"], row["clip"], row.get("seed"))


def run_stability(
    base: dict, grid: StabilityGrid, out_dir: Path, jobs: int, threads_per_cell: int, progress: bool = True, report_only: bool = False
) -> Outcome:
    """Run (or resume) the grid, then write results.csv, curves.csv, the figures and report.md into ``out_dir``.

    A study folder accumulates: cells of earlier runs with other axes (a second seed for a few schemes, say)
    stay in the table, provided every setting outside the axes is unchanged.
    """
    base, data, baselines = prepare_study(base)
    cells = stability_cells(base, grid)
    cells += earlier_cells(out_dir, base, cells)
    outcome = run_study(out_dir, base, data, baselines, cells, jobs, threads_per_cell, progress, report_only)
    if outcome.records:
        write_stability_outputs(out_dir, base, outcome)
    return outcome


def write_stability_outputs(out_dir: Path, base: dict, outcome: Outcome) -> None:
    from . import plots

    rows = [flatten(record) for record in outcome.records]
    assign_verdicts(rows, outcome.baselines["unigram"])
    write_csv(out_dir / "results.csv", rows, CSV_COLUMNS)
    curve_rows = [
        {"id": row["id"], "curve": name, "step": step, "value": value}
        for row in rows
        for name, points in row["curves"].items()
        for step, value in points
    ]
    write_csv(out_dir / "curves.csv", curve_rows, ["id", "curve", "step", "value"])
    plots.stability_heatmap(rows, out_dir / "stability_map.png")
    figures = []
    for index, combination in enumerate(dict.fromkeys(combination_label(row) for row in rows), start=1):
        group = [row for row in rows if combination_label(row) == combination]
        names = (f"loss_{index}.png", f"grad_norm_{index}.png", f"update_norm_{index}.png")
        plots.stability_curves(group, ("train_loss", "valid_loss"), "loss", out_dir / names[0])
        plots.stability_curves(group, ("grad_norm_first", "grad_norm_last"), "grad norm (first, last layer)", out_dir / names[1], log_scale=True)
        plots.stability_curves(group, ("update_norm_first", "update_norm_last"), "update norm (first, last layer)", out_dir / names[2], log_scale=True)
        profile_name = f"depth_profile_{index}.png"
        plots.depth_profiles(group, base["train"]["adam_eps"], out_dir / profile_name)
        figures.append((combination, (*names, profile_name)))
    (out_dir / "report.md").write_text(stability_markdown(base, rows, figures, outcome), encoding="utf-8")


def stability_markdown(base: dict, rows: list[dict], figures: list[tuple[str, tuple[str, ...]]], outcome: Outcome) -> str:
    model, train = base["model"], base["train"]
    steps = train["max_steps"]
    tokens = steps * tokens_per_step(train)
    table_rows = [
        {
            **row,
            "lr_text": format_lr(row["lr"]),
            "clip_text": format_clip(row["clip"]),
            "final": number(row["final_valid_loss"]),
            "best": number(row["best_valid_loss"]),
            "verdict_text": _verdict_text(row),
            "below": number(row["below_unigram"]),
            "gain": number(row.get("context_gain")),
            "live": "n/a" if row.get("live_fraction") is None else f"{row['live_fraction']:.0%}",
            "collapse": row.get("collapse_step") if row.get("collapse_step") is not None else "",
            "wall": f"{row['wall_seconds']:.0f}",
        }
        for row in rows
    ]
    columns = [
        ("scheme", "scheme"), ("layers", "depth"), ("lr", "lr_text"), ("warmup", "warmup"), ("clip", "clip_text"),
        ("seed", "seed"), ("verdict", "verdict_text"), ("final valid loss", "final"), ("below unigram", "below"),
        ("context gain", "gain"), ("live blocks", "live"), ("collapse step", "collapse"), ("wall s", "wall"),
    ]  # fmt: skip
    lines = [
        f"# Stability map: {model.get('arch', 'gpt')}, width {model.get('hidden_size')}",
        "",
        f"Each cell: {steps} steps of {train['batch_size']} sequences × {train['seq_len']} tokens × {train['grad_accum']} "
        f"accumulation ({tokens:,} tokens), seed {train['seed']}, same data order in every cell; a cell diverged when its loss "
        f"became non-finite (the run stops there) or its smoothed training loss ended more than {START_MARGIN:.0%} above its first loss.",
        "",
        f"Data: {outcome.data}",
        "",
        "## Reading",
        "",
        *[f"- {bullet}" for bullet in stability_reading(rows, outcome.baselines, steps, tokens)],
        "",
        "## Map",
        "",
        "![stability map](stability_map.png)",
        "",
        "## Table",
        "",
        markdown_table(table_rows, columns),
        "",
        "## Curves",
        "",
    ]
    for combination, names in figures:
        lines += [f"### {combination}", "", *[f"![{name}]({name})" for name in names], ""]
    if outcome.pending:
        lines += ["## Cells not finished yet", "", *[f"- `{cell}`" for cell in outcome.pending], ""]
    if outcome.failures:
        lines += ["## Cells that failed to run", "", *[f"- `{cell}`: {message}" for cell, message in outcome.failures.items()], ""]
    lines += settings_section(base, VARIED)
    return "\n".join(lines)


def _verdict_text(row: dict) -> str:
    """The verdict for tables: control cells say so, and "beats shallow" is appended where it holds."""
    if row.get("is_control"):
        return f"{row['verdict']} (control)"
    text = row["verdict"] if row["verdict"] != DIVERGED else f"**diverged** ({divergence_detail(row)})"
    return text + (", beats shallow" if row.get("beats_shallow") else "")
