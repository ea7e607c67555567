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
    """The training settings a panel of the stability map shares: LR, warmup, clipping."""
    return f"lr {format_lr(row['lr'])}, warmup {row['warmup']}, clip {format_clip(row['clip'])}"


def stability_reading(rows: list[dict], steps: int, tokens_per_cell: int) -> list[str]:
    """Bullet points read off the stability table: divergences per scheme, ranking at the deepest depth, caveats."""
    bullets = []
    diverged = [row for row in rows if row["diverged"]]
    nonfinite = sum(row["divergence"] == NONFINITE for row in diverged)
    bullets.append(
        f"{len(rows) - len(diverged)} of {len(rows)} cells trained to the end without diverging; "
        f"{len(diverged)} diverged ({nonfinite} with a non-finite loss, {len(diverged) - nonfinite} ending above their starting loss)."
    )
    schemes = list(dict.fromkeys(row["scheme"] for row in rows))
    stable = []
    for scheme in schemes:
        cells = [row for row in rows if row["scheme"] == scheme]
        failed = [row for row in cells if row["diverged"]]
        if not failed:
            stable.append(f"`{scheme}`")
            continue
        where = "; ".join(
            f"{layers(row['depth'])} at {combination_label(row)} ({divergence_detail(row)})"
            for row in failed
        )
        bullets.append(f"`{scheme}` diverged in {len(failed)} of {len(cells)} cells: {where}.")
    if stable:
        bullets.append(f"Never diverged in this grid: {', '.join(stable)}.")

    silent = [row for row in rows if row.get("grad_norm_first_end") == 0.0]
    if silent:
        where = "; ".join(
            f"`{row['scheme']}` at {layers(row['depth'])}, {combination_label(row)} "
            f"(0 at {sum(value == 0.0 for _, value in row['curves']['grad_norm_first'])} of {len(row['curves']['grad_norm_first'])} diagnostics steps)"
            for row in silent
        )
        bullets.append(
            "The first layer's gradient norm at the last diagnostics step was exactly 0 — the gradient underflowed "
            "float32 on its way down the stack, so whatever update that layer still got came from Adam's running "
            f"moments, not from the current batch — in {len(silent)} cell{'s' if len(silent) > 1 else ''}: {where}."
        )

    deepest = max(row["depth"] for row in rows)
    by_combination = defaultdict(list)
    for row in rows:
        if row["depth"] == deepest:
            by_combination[combination_label(row)].append(row)
    for label, cells in by_combination.items():
        trained = sorted((row for row in cells if not row["diverged"] and _finite(row["final_valid_loss"])), key=lambda row: row["final_valid_loss"])
        if not trained:
            bullets.append(f"At {layers(deepest)}, {label}: no scheme trained.")
            continue
        ranking = ", ".join(f"`{row['scheme']}` {number(row['final_valid_loss'])}" for row in trained)
        spread = trained[-1]["final_valid_loss"] - trained[0]["final_valid_loss"]
        failed = [f"`{row['scheme']}`" for row in cells if row not in trained]
        sentence = f"At {layers(deepest)}, {label}: final validation loss {ranking}"
        sentence += f" (spread {number(spread)} nats)" if len(trained) > 1 else ""
        sentence += f"; diverged or no loss: {', '.join(failed)}." if failed else "."
        bullets.append(sentence)
    bullets.append(
        f"Each cell is one seed and {steps} steps ({tokens_per_cell:,} training tokens): the table measures whether and how "
        "fast a scheme starts to train, not its final quality, and the seed-to-seed noise was not measured, so small "
        "differences between schemes that trained are not shown to be real."
    )
    return bullets


def depth_reading(rows: list[dict], budget_label: str) -> list[str]:
    """Bullet points read off the depth table: best depth, whether the grid brackets it, divergences, budget accuracy."""
    bullets = []
    ordered = sorted(rows, key=lambda row: row["depth"])
    trained = [row for row in ordered if not row["diverged"] and _finite(row["final_valid_loss"])]
    deviation = max(abs(row["budget_deviation_pct"]) for row in ordered)
    bullets.append(f"Budget: {budget_label}; every depth's parameter count is within {deviation:.2f} % of it.")
    failed = [row for row in ordered if row not in trained]
    if failed:
        bullets.append("Diverged or no validation loss: " + ", ".join(f"{layers(row['depth'])} ({divergence_text(row)})" for row in failed) + ".")
    if not trained:
        bullets.append("No depth trained, so this study says nothing about an optimal depth.")
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
