"""``kilolayer study signal``: how the signal crosses every layer, at initialisation and after k steps, in float64.

For each scheme and depth the model is built, converted to float64, and trained exactly as the
engine trains a study cell (same batches in the same order, AdamW with its parameter groups, the
learning-rate schedule and gradient clipping), with denormals kept. At each measurement step s
(0 = initialisation) one forward and backward pass on a fixed probe batch (the first validation
batch) records, for every block ℓ with output h_ℓ:

- ``activation_rms``: ‖h_ℓ‖ / √numel, the forward signal in the residual stream;
- ``stream_grad_norm``: ‖∂L/∂h_ℓ‖, the backward signal reaching the stream after block ℓ;
- ``grad_norm``: ‖∂L/∂θ_ℓ‖ over block ℓ's parameters, what the optimizer is given.

Every norm is max-scaled (``exact_norm``): m·‖g/m‖ with m = max |g|, so that squaring never
underflows. A gradient of 1e-200 reads 1e-200, and 0 means that every entry is exactly 0.
The figure plots the three quantities against ℓ on a log scale, one panel per measurement step.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from pathlib import Path


from ..errors import KiloError
from .runner import write_json_atomic

QUANTITIES = ("grad_norm", "stream_grad_norm", "activation_rms")
QUANTITY_LABELS = {
    "grad_norm": "‖∂L/∂θ_ℓ‖ (block parameters)",
    "stream_grad_norm": "‖∂L/∂h_ℓ‖ (residual stream)",
    "activation_rms": "RMS of h_ℓ",
}
CSV_COLUMNS = ["scheme", "depth", "step", "layer", "probe_loss", *QUANTITIES]
DEFAULT_OUT = "studies/signal-{arch}"


def exact_norm(tensors) -> float:
    """The 2-norm of all entries of ``tensors`` together, as m·‖t/m‖ with m the largest |entry|.

    Squaring the entries themselves underflows below ~1e-154 in float64 (and ~1e-19 in float32),
    which would report a tiny but nonzero gradient as 0. Non-finite entries give NaN or inf.
    """
    import torch  # here, not at the top: ``kilolayer --help`` registers this command without loading torch

    tensors = [t.detach() for t in tensors if t is not None and t.numel()]
    if any(t.isnan().any() for t in tensors):
        return math.nan
    largest = max((t.abs().max().item() for t in tensors), default=0.0)
    if largest == 0.0 or largest == math.inf:
        return largest
    scaled = sum(float(torch.linalg.vector_norm(t / largest, dtype=torch.float64) ** 2) for t in tensors)
    return largest * math.sqrt(scaled)


def causal_lm_loss(model, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy, computed here in the model's dtype (the model's own loss casts to float32)."""
    import torch.nn.functional as F

    hidden = model.model(input_ids=input_ids, use_cache=False).last_hidden_state
    logits = model.lm_head(hidden)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def measure(model, batch: dict[str, torch.Tensor]) -> dict:
    """One forward and backward pass on ``batch``: the probe loss and, per block, the three norms (module docstring).

    Leaves no gradient behind (the parameters' ``.grad`` are cleared again).
    """
    outputs: list[torch.Tensor] = []

    def keep_output(module, inputs, output):
        output.retain_grad()
        outputs.append(output)

    blocks = list(model.model.layers)
    hooks = [block.register_forward_hook(keep_output) for block in blocks]
    try:
        model.zero_grad(set_to_none=True)
        loss = causal_lm_loss(model, batch["input_ids"], batch["labels"])
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    record = {
        "probe_loss": loss.item(),
        "grad_norm": [exact_norm([p.grad for p in block.parameters()]) for block in blocks],
        "stream_grad_norm": [exact_norm([output.grad]) for output in outputs],
        "activation_rms": [exact_norm([output]) / math.sqrt(output.numel()) for output in outputs],
    }
    model.zero_grad(set_to_none=True)
    return record


def run_cell(model_section: dict, train: dict, steps: list[int], train_batches, probe: dict) -> dict:
    """Build one model in float64, measure it at step 0 and train it to each later step in ``steps``."""
    import torch

    from ..presets import build_model_config
    from ..train.config import TrainConfig
    from ..train.loop import build_optimizer
    from ..train.schedule import learning_rate
    from ..modeling import KiloForCausalLM

    config = TrainConfig.from_dict(train)
    torch.manual_seed(config.seed)
    model = KiloForCausalLM(build_model_config(model_section)).to(torch.float64).eval()  # dropout off
    optimizer = build_optimizer(model, config, sharded=False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    train_loss, measurements, nonfinite_at = [], [], None
    if 0 in steps:
        measurements.append({"step": 0, **measure(model, probe)})
    for step in range(1, max(steps) + 1):
        batch = train_batches.get_batch(step - 1)  # the engine's micro-batch order (grad_accum 1)
        loss = causal_lm_loss(model, batch["input_ids"], batch["labels"])
        loss.backward()
        train_loss.append(loss.item())
        if not math.isfinite(train_loss[-1]):
            nonfinite_at = step
            break
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step - 1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step in steps:
            measurements.append({"step": step, **measure(model, probe)})
    return {"train_loss": train_loss, "nonfinite_at": nonfinite_at, "measurements": measurements}


def run_signal(base: dict, schemes: list[str], depths: list[int], steps: list[int], out: Path, progress: bool = True) -> list[dict]:
    """Every (scheme, depth) cell, in float64; finished cells (``cells/*.json``) are kept, so a rerun resumes.

    Writes signal.json, signal.csv, one figure per depth (signal_L{depth}.png) and summary.md.
    """
    import torch

    from ..data import prepare_data
    from ..train.config import TrainConfig
    from ..train.task import default_cache_dir
    from ..train.process import flushes_denormals
    from .shared import load_json

    train = base["train"]
    if base["model"]["arch"] != "gpt":
        raise KiloError("study signal measures a causal LM; use --arch gpt (or a gpt preset)")
    data = prepare_data(TrainConfig.from_dict(train), "gpt", default_cache_dir())
    model_section = {**base["model"], "vocab_size": len(data.tokenizer)}
    settings = {"model": model_section, "train": train, "steps": steps, "data": data.description}
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    if settings_file.exists() and _fingerprint(load_json(settings_file)) != _fingerprint(settings):
        raise KiloError(f"{out} holds a signal study with other settings; give another --out or delete it")
    write_json_atomic(settings_file, settings)
    train_batches = data.batches("train", train["batch_size"], train["seq_len"], train["seed"])
    probe = data.batches("valid", train["batch_size"], train["seq_len"], 0).get_batch(0)

    flush_was = flushes_denormals()
    torch.set_flush_denormal(False)  # float64 denormals (down to 5e-324) are values here, not noise
    cells = []
    try:
        for depth in depths:
            for scheme in schemes:
                cell_file = out / "cells" / f"{scheme}_L{depth}.json"
                if cell_file.exists():
                    cell = load_json(cell_file)
                else:
                    section = {**model_section, "scheme": scheme, "num_layers": depth}
                    cell = {"scheme": scheme, "depth": depth, **run_cell(section, train, steps, train_batches, probe)}
                    cell_file.parent.mkdir(exist_ok=True)
                    write_json_atomic(cell_file, cell)
                cells.append(cell)
                if progress:
                    print(summary_line(cell), flush=True)
    finally:
        torch.set_flush_denormal(flush_was)
    write_json_atomic(out / "signal.json", {"settings": settings, "cells": cells})
    write_signal_csv(cells, out / "signal.csv")
    for depth in depths:
        signal_figure([cell for cell in cells if cell["depth"] == depth], out / f"signal_L{depth}.png")
    (out / "summary.md").write_text(summary_markdown(cells, settings), encoding="utf-8")
    return cells


def _fingerprint(settings: dict) -> str:
    """What makes two runs' cells comparable: the model and train sections and the steps. The data is named by
    ``train.data`` and the tokenizer settings (its description's wording may change between versions), and a
    setting left at None counts as absent (a field added to the config later does not orphan finished cells)."""
    comparable = {
        "steps": settings["steps"],
        **{section: {k: v for k, v in settings[section].items() if v is not None} for section in ("model", "train")},
    }
    return hashlib.sha256(json.dumps(comparable, sort_keys=True).encode()).hexdigest()


def write_signal_csv(cells: list[dict], path: Path) -> None:
    """One row per (scheme, depth, step, layer), layers 1-based."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for cell in cells:
            for measurement in cell["measurements"]:
                for layer, values in enumerate(zip(*(measurement[q] for q in QUANTITIES)), start=1):
                    writer.writerow([cell["scheme"], cell["depth"], measurement["step"], layer,
                                     f"{measurement['probe_loss']:.6g}", *(f"{v:.6e}" for v in values)])  # fmt: skip


def signal_figure(cells: list[dict], path: Path) -> None:
    """Rows: the three quantities; columns: the measurement steps; one line per scheme against the layer, log scale.

    An exact 0 cannot sit on a log axis: it is drawn as a ▼ on the panel's bottom edge.
    """
    import matplotlib

    from .plots import figure_on_agg

    steps = sorted({m["step"] for cell in cells for m in cell["measurements"]})
    colours = matplotlib.colormaps.get_cmap("tab10")  # ten colours, then the same ten dashed

    def style(index: int) -> dict:
        return {"color": colours(index % 10), "linestyle": "-" if index < 10 else "--"}

    figure = figure_on_agg((1 + 4.2 * len(steps), 1 + 2.8 * len(QUANTITIES)))
    axes = figure.subplots(len(QUANTITIES), len(steps), squeeze=False, sharex=True)
    for column, step in enumerate(steps):
        for row, quantity in enumerate(QUANTITIES):
            axis = axes[row][column]
            zeros = []
            for index, cell in enumerate(cells):
                measurement = next((m for m in cell["measurements"] if m["step"] == step), None)
                if measurement is None:
                    continue
                values = measurement[quantity]
                layers = range(1, len(values) + 1)
                positive = [(layer, v) for layer, v in zip(layers, values) if v > 0 and math.isfinite(v)]
                zeros += [(layer, index) for layer, v in zip(layers, values) if v == 0]
                if positive:
                    axis.plot(*zip(*positive), **style(index), linewidth=1.1, label=cell["scheme"])
            axis.set_yscale("log")
            if zeros:
                bottom = axis.get_ylim()[0]
                for layer, index in zeros:
                    axis.plot(layer, bottom, "v", color=style(index)["color"], markersize=4, clip_on=False)
            axis.grid(True, which="major", alpha=0.3)
            if row == 0:
                axis.set_title("initialisation" if step == 0 else f"after {step} steps")
            if column == 0:
                axis.set_ylabel(QUANTITY_LABELS[quantity])
            if row == len(QUANTITIES) - 1:
                axis.set_xlabel("layer ℓ")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    depth = cells[0]["depth"] if cells else 0
    figure.suptitle(f"Signal propagation at {depth} layers, float64 (▼: exactly 0)")
    figure.tight_layout(rect=(0, 0.07, 1, 0.97))
    figure.savefig(path, dpi=110)


def decades(first: float, last: float) -> float | None:
    """log10(first / last): how many orders of magnitude the first block's value lies below (−) or above the last's."""
    if first > 0 and last > 0 and math.isfinite(first) and math.isfinite(last):
        return math.log10(first / last)
    return None


def summary_line(cell: dict) -> str:
    parts = [f"{cell['scheme']:>14} L{cell['depth']}"]
    for measurement in cell["measurements"]:
        grads = measurement["grad_norm"]
        parts.append(f"step {measurement['step']}: loss {measurement['probe_loss']:.3f}, grad first {grads[0]:.2e} last {grads[-1]:.2e}")
    if cell["nonfinite_at"]:
        parts.append(f"non-finite at step {cell['nonfinite_at']}")
    return " | ".join(parts)


def summary_markdown(cells: list[dict], settings: dict) -> str:
    """The table beside the figures: per cell and step, the probe loss and the first and last blocks' numbers."""
    model, train = settings["model"], settings["train"]
    lines = [
        "# Signal propagation (float64)",
        "",
        f"Model: {model.get('hidden_size')} wide, {model.get('num_heads')} heads, vocabulary {model.get('vocab_size')}; "
        f"batch {train['batch_size']} × {train['seq_len']} tokens; AdamW lr {train['lr']:g} "
        f"({train['schedule']}, warmup {train['warmup_steps']}), clip {train['grad_clip']}, seed {train['seed']}. "
        f"Data: {settings['data']}. Probe: the first validation batch.",
        "",
        "`train loss`: the loss of the step's own training batch; `grad first/last`: ‖∂L/∂θ‖ of the first and last "
        "block; `decades`: log10(first / last); `stream first`: ‖∂L/∂h‖ after the first block; `rms last`: RMS of "
        "the last block's output.",
        "",
        "| scheme | depth | step | train loss | probe loss | grad first | grad last | decades | stream first | rms last |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        for m in cell["measurements"]:
            gap = decades(m["grad_norm"][0], m["grad_norm"][-1])
            train_loss = f"{cell['train_loss'][m['step'] - 1]:.3f}" if 0 < m["step"] <= len(cell["train_loss"]) else "—"
            lines.append(
                f"| {cell['scheme']} | {cell['depth']} | {m['step']} | {train_loss} | {m['probe_loss']:.3f} | {m['grad_norm'][0]:.2e} | "
                f"{m['grad_norm'][-1]:.2e} | {'—' if gap is None else f'{gap:+.1f}'} | {m['stream_grad_norm'][0]:.2e} | "
                f"{m['activation_rms'][-1]:.3g} |"
            )
    nonfinite = [f"{cell['scheme']} L{cell['depth']} at step {cell['nonfinite_at']}" for cell in cells if cell["nonfinite_at"]]
    if nonfinite:
        lines += ["", "Non-finite training loss (training stopped there): " + ", ".join(nonfinite) + "."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ command line


def register_signal(commands) -> None:
    """The ``kilolayer study signal`` parser (registered by ``study/cli.py``)."""
    from ..presets.cli import add_config_arguments

    parser = commands.add_parser(
        "signal",
        help="per-layer gradient and activation norms at init and after k steps, in float64, for every scheme",
        description="Build each scheme at each depth in float64, train it as a study cell trains (same batches, AdamW, "
        "schedule, clipping) and measure, at each of --steps (0 = init), every block's parameter-gradient norm, "
        "residual-stream gradient norm and activation RMS on the first validation batch. Norms are max-scaled: "
        "0 means exactly 0. Writes signal.json, signal.csv, signal_L{depth}.png and summary.md; re-running resumes.",
    )
    add_config_arguments(parser, default_preset=None, preset_help="base preset or YAML file (default: gpt-1k-cpu)")
    parser.add_argument("--data", help="corpus file or folder (default: $KILOLAYER_DATA/corpus, else the embedded default)")
    parser.add_argument("--schemes", default="all", help="comma-separated scheme names, or all (default: all)")
    parser.add_argument("--depths", default="1000", help="comma-separated layer counts (default: 1000)")
    parser.add_argument("--steps", default="0,10", help="comma-separated optimizer steps to measure at; 0 = init (default: 0,10)")
    parser.add_argument("--out", help=f"output folder; re-running into it resumes (default: {DEFAULT_OUT.format(arch='gpt')})")
    parser.add_argument("--no-progress", action="store_true", help="no line per finished cell")
    parser.set_defaults(func=signal_command)


def signal_command(args: argparse.Namespace) -> int:
    from ..modeling import SCHEMES
    from .cli import _positive_int, _split
    from .shared import base_config

    base = base_config(args.preset or "gpt-1k-cpu", args.config, args.data, args.overrides)
    schemes = list(SCHEMES) if args.schemes == "all" else list(_split(args.schemes, str, "schemes"))
    unknown = [scheme for scheme in schemes if scheme not in SCHEMES]
    if unknown:
        raise KiloError(f"unknown scheme {', '.join(unknown)}; known schemes: {', '.join(SCHEMES)}")
    depths = list(_split(args.depths, _positive_int, "depths"))
    steps = sorted(_split(args.steps, _non_negative_int, "steps"))
    out = Path(args.out or DEFAULT_OUT.format(arch=base["model"]["arch"]))
    run_signal(base, schemes, depths, steps, out, progress=not args.no_progress)
    print(f"→ {out / 'summary.md'}, {out / 'signal.csv'}, " + ", ".join(str(out / f"signal_L{d}.png") for d in depths))
    return 0


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value
