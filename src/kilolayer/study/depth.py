"""FPM's question: at a fixed parameter budget, which depth gives the lowest validation loss?

Each depth gets the width (and FFN size) that keeps the parameter count at the budget
(``budget.shape_for_budget``) and the same training run. By default every depth trains the same
number of steps, so the same tokens and, at equal parameters, the same ≈ 6 · params · tokens FLOPs;
with a FLOPs budget each depth's step count is set from its achieved parameter count instead, so
the compute is equal even where the counts differ slightly. For GPT, zero-shot accuracy of each
trained model can be added (lm-evaluation-harness on the local task files).

Each depth gets a verdict against the unigram/bigram baselines of the same validation batches
(``verdicts.py``); the best depth is looked for only among the depths that learned.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import KiloError
from ..presets import merge
from .budget import count_parameters, shape_for_budget
from .report import depth_reading, divergence_detail, layers, markdown_table, number, settings_section, write_csv
from .runner import Cell, Outcome
from .shared import flatten, prepare_study, run_study, tokens_per_step
from .verdicts import classify

FLOPS_PER_PARAMETER_TOKEN = 6  # forward 2 + backward 4 multiply-adds per parameter and token

CSV_COLUMNS = [
    "id", "depth", "hidden_size", "ffn_size", "num_heads", "parameters", "budget_deviation_pct", "max_steps", "steps", "tokens", "flops",
    "verdict", "context_gain", "live_fraction", "used_blocks", "collapse_step",
    "status", "diverged", "divergence", "diverged_at", "start_loss", "final_train_loss", "final_valid_loss", "best_valid_loss",
    "wall_seconds", "tokens_per_second",
]  # fmt: skip


def training_flops(parameters: int, steps: int, train: dict) -> int:
    return FLOPS_PER_PARAMETER_TOKEN * parameters * steps * tokens_per_step(train)


def depth_cells(base: dict, depths: list[int], budget: int, flops: float | None, zero_shot: dict | None) -> list[Cell]:
    """One cell per depth with the shape that keeps ``budget`` parameters (and ``flops``, when given)."""
    cells = []
    for depth in depths:
        shape = shape_for_budget(base["model"], depth, budget)
        steps = base["train"]["max_steps"]
        if flops is not None:
            steps = round(flops / (FLOPS_PER_PARAMETER_TOKEN * shape.parameters * tokens_per_step(base["train"])))
            if steps < 1:
                raise KiloError(f"a FLOPs budget of {flops:.3g} is less than one step of the {depth}-layer model; raise --flops")
        train = {"max_steps": steps}
        if zero_shot:
            train["export"] = True  # the zero-shot evaluation reads the exported model folder
        config = merge(base, {"model": shape.model_overrides(), "train": train})
        axes = {
            "depth": depth,
            "hidden_size": shape.hidden_size,
            "ffn_size": shape.ffn_size,
            "num_heads": shape.num_heads,
            "parameters": shape.parameters,
            "budget_deviation_pct": 100 * (shape.parameters - budget) / budget,
            "max_steps": steps,
            "tokens": steps * tokens_per_step(base["train"]),
            "flops": training_flops(shape.parameters, steps, base["train"]),
        }
        cells.append(Cell(f"L{depth}_w{shape.hidden_size}", axes, config, zero_shot))
    return cells


def run_depth(
    base: dict,
    depths: list[int],
    budget: int | None,
    flops: float | None,
    zero_shot: dict | None,
    out_dir: Path,
    jobs: int,
    threads_per_cell: int,
    progress: bool = True,
) -> Outcome:
    """Run (or resume) one training run per depth, then write results.csv, depth_curve.png and report.md."""
    base, data, baselines = prepare_study(base)
    budget = budget or count_parameters(base["model"])
    cells = depth_cells(base, sorted(set(depths)), budget, flops, zero_shot)
    outcome = run_study(out_dir, base, data, baselines, cells, jobs, threads_per_cell, progress)
    if outcome.records:
        write_depth_outputs(out_dir, base, budget, flops, outcome)
    return outcome


def budget_label(base: dict, budget: int, flops: float | None) -> str:
    label = f"{budget:,} parameters"
    if flops is not None:
        return label + f" and {flops:.3g} training FLOPs (≈ 6 · parameters · tokens; steps set per depth)"
    return label + f", {base['train']['max_steps']} steps of {tokens_per_step(base['train']):,} tokens at every depth"


def write_depth_outputs(out_dir: Path, base: dict, budget: int, flops: float | None, outcome: Outcome) -> None:
    from . import plots

    rows = [flatten(record) for record in outcome.records]
    for row in rows:
        row["verdict"], row["verdict_detail"] = classify(row, outcome.baselines["unigram"])
    tasks = sorted({task for row in rows for task in row.get("zero_shot", {})})
    zero_shot_columns = [f"{task}_{metric}" for task in tasks for metric in _task_metrics(rows, task)]
    for row in rows:
        for task in tasks:
            for metric, value in row.get("zero_shot", {}).get(task, {}).items():
                row[f"{task}_{metric}"] = value
    write_csv(out_dir / "results.csv", rows, CSV_COLUMNS + zero_shot_columns)
    plots.depth_curve(rows, out_dir / "depth_curve.png", f"{base['model']['arch']}: validation loss at {budget:,} parameters")
    (out_dir / "report.md").write_text(depth_markdown(base, rows, budget, flops, zero_shot_columns, outcome), encoding="utf-8")


def _score_text(column: str, value: float | None) -> str:
    """Accuracies as percentages (as the paper reports them); LAMBADA's perplexity as it is."""
    if value is None:
        return "n/a"
    return number(value, 2) if column.endswith("perplexity") else f"{100 * value:.1f} %"


def _task_metrics(rows: list[dict], task: str) -> list[str]:
    return list(dict.fromkeys(metric for row in rows for metric in row.get("zero_shot", {}).get(task, {})))


def depth_markdown(base: dict, rows: list[dict], budget: int, flops: float | None, zero_shot_columns: list[str], outcome: Outcome) -> str:
    train = base["train"]
    label = budget_label(base, budget, flops)
    ordered = sorted(rows, key=lambda row: row["depth"])
    table_rows = [
        {
            **row,
            "parameters_text": f"{row['parameters']:,}",
            "deviation": f"{row['budget_deviation_pct']:+.2f} %",
            "ffn_ratio": f"{row['ffn_size'] / row['hidden_size']:.2f}",
            "final": number(row["final_valid_loss"]),
            "best": number(row["best_valid_loss"]),
            "verdict_text": row["verdict"] if row["verdict"] != "diverged" else f"**diverged** ({divergence_detail(row)})",
            "gain": number(row.get("context_gain")),
            "flops_text": f"{row['flops']:.3g}",
            "wall": f"{row['wall_seconds']:.0f}",
            **{column: _score_text(column, row.get(column)) for column in zero_shot_columns},
        }
        for row in ordered
    ]
    columns = [
        ("layers", "depth"), ("width", "hidden_size"), ("heads", "num_heads"), ("ffn", "ffn_size"), ("ffn/width", "ffn_ratio"),
        ("parameters", "parameters_text"), ("vs budget", "deviation"), ("steps", "max_steps"), ("FLOPs", "flops_text"),
        ("final valid loss", "final"), ("best valid loss", "best"), ("verdict", "verdict_text"), ("context gain", "gain"), ("wall s", "wall"),
        *[(column, column) for column in zero_shot_columns],
    ]  # fmt: skip
    lines = [
        f"# Optimal depth: {base['model']['arch']}, {budget:,} parameters",
        "",
        f"Budget: {label}. Width is a multiple of {base['model'].get('num_heads')} heads"
        f"{' × 2 (rotary positions need an even head size)' if base['model'].get('position_embedding') == 'rotary' else ''}; "
        "the FFN size takes up the remainder, so its ratio to the width varies around 4. "
        f"Scheme {base['model'].get('scheme')}, lr {train['lr']:g}, warmup {train['warmup_steps']}, seed {train.get('seed', 0)}, "
        "same data order at every depth.",
        "",
        f"Data: {outcome.data}",
        "",
        "## Reading",
        "",
        *[f"- {bullet}" for bullet in depth_reading(rows, label, outcome.baselines)],
        "",
        "![validation loss against depth](depth_curve.png)",
        "",
        "## Table",
        "",
        markdown_table(table_rows, columns),
        "",
    ]
    if zero_shot_columns:
        lines += [
            "Zero-shot columns: lm-evaluation-harness scoring on the local task files"
            f"{' (first ' + str(rows[0]['zero_shot_limit']) + ' examples per task)' if rows[0].get('zero_shot_limit') else ''}; "
            "chance is 50 % for PIQA and Winogrande, 25 % for HellaSwag.",
            "",
        ]
    unscored = [row for row in ordered if row.get("zero_shot_error")]
    if unscored:
        lines += ["Zero-shot scores missing:", "", *[f"- {layers(row['depth'])}: {row['zero_shot_error']}" for row in unscored], ""]
    if outcome.failures:
        lines += ["## Cells that failed to run", "", *[f"- `{cell}`: {message}" for cell, message in outcome.failures.items()], ""]
    lines += settings_section(base, {"model": ("num_layers", "hidden_size", "ffn_size"), "train": ("max_steps",) if flops else ()})
    return "\n".join(lines)
