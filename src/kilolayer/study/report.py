"""Tables (CSV, Markdown) and the written reading of a study, generated from its numbers only.

The reading states what the table shows — which cells diverged, how the schemes rank, where the
best depth lies — and what it cannot show (one seed per cell, a short budget). It never claims a
difference is real: the run-to-run noise is not measured by a grid of single runs.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

from .metrics import NONFINITE
from .verdicts import MIN_CONTEXT_GAIN, MIN_GAIN_OVER_UNIGRAM, control_learned


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({key: _csv_value(row.get(key)) for key in columns} for row in rows)


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def number(value, digits: int = 3) -> str:
    """A loss or norm for prose and tables: 3 decimals, 'n/a' where there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def format_lr(lr: float) -> str:
    return f"{lr:g}"


def format_clip(clip: float | None) -> str:
    return "off" if clip is None else f"{clip:g}"


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns`` = [(header, key)]; values already formatted by the caller."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[key]) for _, key in columns) + " |" for row in rows]
    return "\n".join(lines)


def layers(count: int) -> str:
    return f"{count} layer" if count == 1 else f"{count} layers"


def divergence_text(row: dict) -> str:
    """"no", or "**yes** (non-finite, step 12)" for tables."""
    return f"**yes** ({divergence_detail(row)})" if row["diverged"] else "no"


def divergence_detail(row: dict) -> str:
    kind = "non-finite" if row["divergence"] == NONFINITE else "loss above start"
    return f"{kind}, step {row['diverged_at']}"


def combination_label(row: dict) -> str:
    """The training settings a panel of the stability map shares: LR, warmup, clipping (and seed)."""
    label = f"lr {format_lr(row['lr'])}, warmup {row['warmup']}, clip {format_clip(row['clip'])}"
    return label + (f", seed {row['seed']}" if row.get("seed") is not None else "")


def _baseline_sentence(baselines: dict) -> str:
    bigram = baselines.get("bigram")
    return (
        f"Baselines on the same {baselines['valid_targets']:,} validation targets: unigram {number(baselines['unigram'])} nats"
        + (f", bigram {number(bigram)} nats" if bigram is not None else "")
        + f" (add-λ counts over {baselines['train_tokens']:,} training tokens). A cell must end at least "
        f"{MIN_GAIN_OVER_UNIGRAM} nats below unigram, with a context gain of at least {MIN_CONTEXT_GAIN} nats, to count as learning."
    )


def stability_reading(rows: list[dict], baselines: dict, steps: int, tokens_per_cell: int) -> list[str]:
    """Bullet points read off the table in the verdicts' words (``verdicts.py``), each with the numbers behind it."""
    unigram = baselines["unigram"]
    bullets = [_baseline_sentence(baselines)]
    controls = [row for row in rows if row.get("is_control")]
    for control in controls:
        label = f"`{control['scheme']}` at {layers(control['depth'])}, {combination_label(control)}"
        if control_learned(control["final_valid_loss"] if control["verdict"] != "diverged" else None, unigram):
            bullets.append(
                f"Shallow control {label}: {number(control['final_valid_loss'])} nats ({number(control['below_unigram'])} below unigram, "
                f"context gain {number(control['context_gain'])}): the budget is large enough for a model to leave the unigram plateau."
            )
        else:
            bullets.append(
                f"Shallow control {label} did **not** get {MIN_GAIN_OVER_UNIGRAM} nats below unigram "
                f"({number(control['final_valid_loss'])} nats, {control['verdict']}): this budget is too small to compare anything at these settings."
            )
    if not controls:
        bullets.append("No shallow control ran: nothing says whether this budget lets any model learn.")
    by_verdict = defaultdict(list)
    for row in rows:
        if not row.get("is_control"):
            by_verdict[row["verdict"]].append(row)
    for verdict in ("learning", "underused", "plateau", "collapsed", "diverged"):
        cells = by_verdict.get(verdict)
        if cells:
            listed = "; ".join(f"`{row['scheme']}` {layers(row['depth'])}, {combination_label(row)}: {row['verdict_detail']}" for row in cells)
            bullets.append(f"**{verdict}** ({len(cells)} of {len(rows) - len(controls)} cells): {listed}.")
    beaten = [row for row in rows if row.get("beats_shallow")]
    if beaten:
        bullets.append(
            "Beat the shallow control: " + ", ".join(
                f"`{row['scheme']}` {layers(row['depth'])} ({number(row['final_valid_loss'])} vs {number(row['control_loss'])})" for row in beaten
            ) + "."
        )
    collapsed = [row for row in rows if row.get("collapse_step") is not None]
    if collapsed:
        bullets.append(
            "Collapse step (first diagnostics step at which the first block's gradient fell below 1e-10 of the last block's): "
            + ", ".join(f"`{row['scheme']}` {layers(row['depth'])}, {combination_label(row)}: step {row['collapse_step']}" for row in collapsed)
            + "."
        )
    spreads = seed_spreads(rows)
    if spreads:
        bullets.append(
            "Seed-to-seed spread of the final validation loss: "
            + "; ".join(f"`{scheme}` {layers(depth)}, {lr}: {number(spread)} nats over {count} seeds" for (scheme, depth, lr), (spread, count) in spreads.items())
            + ". Differences between cells smaller than these are not shown to be real."
        )
    else:
        bullets.append("Every cell ran one seed: differences between cells are not compared with seed-to-seed noise.")
    bullets.append(f"Each cell is {steps} steps ({tokens_per_cell:,} training tokens).")
    return bullets


def seed_spreads(rows: list[dict]) -> dict[tuple, tuple[float, int]]:
    """(scheme, depth, settings) → (max − min final validation loss, seeds) for every cell run with more than one seed."""
    groups = defaultdict(list)
    for row in rows:
        if _finite(row.get("final_valid_loss")):
            settings = f"lr {format_lr(row['lr'])}, warmup {row['warmup']}, clip {format_clip(row['clip'])}"
            groups[(row["scheme"], row["depth"], settings)].append(row["final_valid_loss"])
    return {key: (max(losses) - min(losses), len(losses)) for key, losses in groups.items() if len(losses) > 1}


def depth_reading(rows: list[dict], budget_label: str, baselines: dict) -> list[str]:
    """Bullet points read off the depth table: verdicts against the baselines, best depth among the cells that learned,
    whether the grid brackets it, budget accuracy."""
    ordered = sorted(rows, key=lambda row: row["depth"])
    deviation = max(abs(row["budget_deviation_pct"]) for row in ordered)
    bullets = [f"Budget: {budget_label}; every depth's parameter count is within {deviation:.2f} % of it.", _baseline_sentence(baselines)]
    trained = [row for row in ordered if row["verdict"] in ("learning", "underused")]
    failed = [row for row in ordered if row not in trained]
    if failed:
        bullets.append("Did not learn: " + "; ".join(f"{layers(row['depth'])} **{row['verdict']}** ({row['verdict_detail']})" for row in failed) + ".")
    if not trained:
        bullets.append("No depth learned from its input beyond the unigram baseline, so this study says nothing about an optimal depth.")
        return bullets
    best = min(trained, key=lambda row: row["final_valid_loss"])
    position = trained.index(best)
    bullets.append(
        f"Lowest final validation loss: {layers(best['depth'])} × {best['hidden_size']} wide ({number(best['final_valid_loss'])})."
    )
    if len(trained) == 1:
        return bullets
    if position in (0, len(trained) - 1):
        edge = "shallowest" if position == 0 else "deepest"
        bullets.append(
            f"That is the {edge} depth that trained, so this grid does not bracket an optimum: the best depth may lie beyond it."
        )
    else:
        neighbours = (trained[position - 1], trained[position + 1])
        margin = min(row["final_valid_loss"] for row in neighbours) - best["final_valid_loss"]
        described = ", ".join(f"{layers(row['depth'])} {number(row['final_valid_loss'])}" for row in neighbours)
        bullets.append(
            f"Both neighbours are worse ({described}; "
            f"margin {number(margin)} nats), consistent with an optimal depth between {neighbours[0]['depth']} and "
            f"{neighbours[1]['depth']} layers at this budget — with one seed per depth, a margin this size is not shown to exceed run-to-run noise."
        )
    return bullets


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def settings_section(base: dict, varied: dict[str, tuple[str, ...]]) -> list[str]:
    """Markdown lines: the config every cell shares, without the keys the study varies (they are in the table)."""
    shared = {section: {key: value for key, value in values.items() if key not in varied.get(section, ())} for section, values in base.items()}
    names = ", ".join(f"{section}.{key}" for section, keys in varied.items() for key in keys)
    return ["## Settings shared by every cell", "", f"Varied per cell: {names}.", "", "```json", json.dumps(shared, indent=1, sort_keys=True), "```", ""]
