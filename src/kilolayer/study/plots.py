"""The studies' figures: the stability map (heatmaps), training curves, and validation loss against depth.

Figures are drawn on matplotlib ``Figure`` objects with the Agg canvas: files only, no display needed,
and the process's pyplot backend is left as the caller set it.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .metrics import NONFINITE
from .report import combination_label, number

DIVERGED_COLOUR = "#bbbbbb"
MIN_COLOUR_SPAN = 0.1  # nats


def figure_on_agg(size: tuple[float, float] | None = None) -> Figure:
    """A figure on its own Agg canvas (no pyplot state)."""
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def stability_heatmap(rows: list[dict], path: Path) -> None:
    """One panel per (LR, warmup, clip): schemes × depths coloured by final validation loss.

    All panels share one colour scale, capped at the highest starting loss so that one exploded cell
    does not wash out the others, and at least ``MIN_COLOUR_SPAN`` wide so that noise-sized differences
    do not look like opposite ends of the scale. Diverged cells carry a ✕ and the step; non-finite ones are grey.
    """
    combinations = list(dict.fromkeys(combination_label(row) for row in rows))
    schemes = list(dict.fromkeys(row["scheme"] for row in rows))
    depths = sorted({row["depth"] for row in rows})
    finite = [row["final_valid_loss"] for row in rows if _finite(row["final_valid_loss"])]
    starts = [row["start_loss"] for row in rows if _finite(row["start_loss"])]
    low = min(finite) if finite else 0.0
    high = max(min(max(finite), max(starts)) if finite and starts else low, low + MIN_COLOUR_SPAN)
    colours = matplotlib.colormaps.get_cmap("viridis")

    columns = min(len(combinations), 3)
    figure_rows = math.ceil(len(combinations) / columns)
    figure = figure_on_agg((1.5 + max(2.4, 0.9 * len(depths)) * columns, 0.9 + max(1.6, 0.45 * len(schemes)) * figure_rows))
    axes = figure.subplots(figure_rows, columns, squeeze=False, sharey=True)
    lookup = {(combination_label(row), row["scheme"], row["depth"]): row for row in rows}
    for index, combination in enumerate(combinations):
        axis = axes[index // columns][index % columns]
        for y, scheme in enumerate(schemes):
            for x, depth in enumerate(depths):
                row = lookup.get((combination, scheme, depth))
                if row is None:
                    continue
                loss = row["final_valid_loss"]
                if _finite(loss):
                    colour = matplotlib.colors.to_rgb(colours(min(1.0, (loss - low) / (high - low))))
                    text = f"{loss:.2f}" if abs(loss) < 1000 else f"{loss:.0e}"
                else:
                    colour, text = matplotlib.colors.to_rgb(DIVERGED_COLOUR), "NaN"
                if row["diverged"]:
                    text = f"✕ {text}\n@{row['diverged_at']}"
                elif row.get("verdict"):
                    text = f"{text}\n{row['verdict']}"
                axis.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, color=colour))
                luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
                axis.text(x, y, text, ha="center", va="center", fontsize=7, color="black" if luminance > 0.5 else "white")
        axis.set_xlim(-0.5, len(depths) - 0.5)
        axis.set_ylim(len(schemes) - 0.5, -0.5)
        axis.set_xticks(range(len(depths)), [str(depth) for depth in depths])
        axis.set_yticks(range(len(schemes)), schemes)  # shared: only the first column shows the names
        axis.set_xlabel("layers")
        axis.set_title(combination, fontsize=9)
    for index in range(len(combinations), figure_rows * columns):
        axes[index // columns][index % columns].axis("off")
    mappable = ScalarMappable(cmap=colours, norm=matplotlib.colors.Normalize(low, high))
    figure.colorbar(mappable, ax=axes, label="final validation loss (✕ diverged, grey: non-finite)", shrink=0.9)
    figure.savefig(path, dpi=120, bbox_inches="tight")


def stability_curves(rows: list[dict], curve_names: tuple[str, ...], ylabel: str, path: Path, log_scale: bool = False) -> None:
    """One panel per depth, one colour per scheme; curve_names share a panel (solid, dashed, dotted).

    For losses the y-range is capped just above the highest starting loss, so a diverging run
    leaves the top of the panel instead of flattening every other curve; its divergence step is marked
    ✕ at the top edge.
    """
    depths = sorted({row["depth"] for row in rows})
    schemes = list(dict.fromkeys(row["scheme"] for row in rows))
    palette, size = ("tab10", 10) if len(schemes) <= 10 else ("tab20", 20)  # one colour per scheme, up to 20
    colours = {scheme: matplotlib.colormaps.get_cmap(palette)(index % size) for index, scheme in enumerate(schemes)}
    styles = ("-", "--", ":")
    columns = min(len(depths), 3)
    figure_rows = math.ceil(len(depths) / columns)
    figure = figure_on_agg((max(7.0, 4.2 * columns), 3.2 * figure_rows))
    axes = figure.subplots(figure_rows, columns, squeeze=False)
    starts = [row["start_loss"] for row in rows if _finite(row["start_loss"])]
    for index, depth in enumerate(depths):
        axis = axes[index // columns][index % columns]
        for row in (row for row in rows if row["depth"] == depth):
            scheme = row["scheme"]
            for style, name in zip(styles, curve_names):
                points = [(step, value) for step, value in row["curves"].get(name, []) if _finite(value)]
                if log_scale:  # a log axis cannot show 0 (an underflowed gradient): ▼ at the bottom edge instead
                    zeros = [step for step, value in points if value == 0]
                    points = [(step, value) for step, value in points if value > 0]
                    if zeros:
                        axis.plot(zeros, [0.03] * len(zeros), "v", color=colours[scheme], transform=axis.get_xaxis_transform())
                if points:
                    axis.plot(*zip(*points), style, color=colours[scheme], linewidth=1.1, marker="." if len(points) < 3 else None)
            if row["diverged"]:  # at the top edge of the panel, whatever the scale
                axis.plot(row["diverged_at"], 0.97, "x", color=colours[scheme], markersize=8, markeredgewidth=2, transform=axis.get_xaxis_transform())
        if log_scale:
            axis.set_yscale("log")
        elif starts:
            plotted = [value for row in rows if row["depth"] == depth for name in curve_names for _, value in row["curves"].get(name, []) if _finite(value)]
            axis.set_ylim(min(plotted, default=0.0) - 0.05, max(starts) * 1.05)
        axis.set_title(f"{depth} layers", fontsize=9)
        axis.set_xlabel("step")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
    for index in range(len(depths), figure_rows * columns):
        axes[index // columns][index % columns].axis("off")
    legend = [Line2D([], [], color=colours[scheme], label=scheme) for scheme in schemes]
    if len(curve_names) > 1:
        legend += [Line2D([], [], color="black", linestyle=style, label=name) for style, name in zip(styles, curve_names)]
    if log_scale:
        legend.append(Line2D([], [], color="black", marker="v", linestyle="", label="exactly 0"))
    figure.legend(handles=legend, loc="upper center", ncol=min(len(legend), 6), fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.92))
    figure.savefig(path, dpi=120)


def depth_curve(rows: list[dict], path: Path, title: str) -> None:
    """Final (and best) validation loss against depth, log-scaled depth axis; the best depth starred, diverged ones ✕."""
    ordered = sorted(rows, key=lambda row: row["depth"])
    trained = [row for row in ordered if not row["diverged"] and _finite(row["final_valid_loss"])]
    figure = figure_on_agg((6, 4))
    axis = figure.subplots()
    if trained:
        axis.plot([row["depth"] for row in trained], [row["final_valid_loss"] for row in trained], "o-", label="final validation loss")
        best_values = [row for row in trained if _finite(row["best_valid_loss"])]
        axis.plot([row["depth"] for row in best_values], [row["best_valid_loss"] for row in best_values], ".--", alpha=0.6, label="best validation loss")
        best = min(trained, key=lambda row: row["final_valid_loss"])
        axis.plot(best["depth"], best["final_valid_loss"], "*", markersize=18, color="tab:red", label=f"best: {best['depth']} layers")
        axis.annotate(
            f"{best['depth']} × {best['hidden_size']}\n{number(best['final_valid_loss'])}",
            (best["depth"], best["final_valid_loss"]), textcoords="offset points", xytext=(8, 8), fontsize=8,
        )
    for row in ordered:
        if row not in trained:
            top = max((r["final_valid_loss"] for r in trained), default=1.0)
            kind = "non-finite" if row["divergence"] == NONFINITE else "diverged"
            axis.plot(row["depth"], top, "x", color="black", markersize=9, markeredgewidth=2)
            axis.annotate(kind, (row["depth"], top), textcoords="offset points", xytext=(4, -12), fontsize=7)
    axis.set_xscale("log")
    axis.set_xticks([row["depth"] for row in ordered], [str(row["depth"]) for row in ordered])
    axis.minorticks_off()
    axis.set_xlabel("layers (width derived from the budget)")
    axis.set_ylabel("validation loss")
    axis.set_title(title, fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def depth_profiles(rows: list[dict], adam_eps: float, path: Path) -> None:
    """Per-block gradient RMS and update/weight ratio against the layer index at the last diagnostics step,
    one line per cell: where in the stack learning stops. Adam's ε is the dotted line of the gradient panel."""
    figure = figure_on_agg((8, 6.5))
    gradients, updates = figure.subplots(2, 1, sharex=True)
    colours = matplotlib.colormaps.get_cmap("tab20")
    for index, row in enumerate(row for row in rows if row.get("profile")):
        profile = row["profile"]
        label = f"{row['scheme']} ×{row['depth']}" + (f" seed {row['seed']}" if row.get("seed") else "")
        for axis, key in ((gradients, "grad_rms"), (updates, "update_ratio")):
            values = [float(value) for value in profile.get(key, [])]
            points = [(layer, value) for layer, value in enumerate(values) if _finite(value) and value > 0]
            if points:
                axis.plot(*zip(*points), color=colours(index % 20), linewidth=0.9, label=label if axis is gradients else None)
    gradients.axhline(adam_eps, color="black", linestyle=":", linewidth=0.8, label="Adam ε")
    gradients.set_yscale("log")
    gradients.set_ylabel("gradient RMS per block")
    updates.set_yscale("log")
    updates.set_ylabel("‖Δθ‖ / ‖θ‖ per block")
    updates.set_xlabel("layer (0-based)")
    for axis in (gradients, updates):
        axis.grid(alpha=0.3)
    gradients.legend(fontsize=7, ncol=3, frameon=False)
    gradients.set_title("at the last diagnostics step (blocks at exactly 0 are not drawn)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
