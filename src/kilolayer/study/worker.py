"""One study cell, in its own process: ``python -m kilolayer.study.worker CELL_DIR``.

Reads ``CELL_DIR/cell.json``, trains with the real engine (resuming the cell's own checkpoint if an
earlier attempt was killed), summarises ``metrics.jsonl`` into ``CELL_DIR/result.json`` (atomically:
its existence marks the cell finished), then deletes the checkpoints, which a study never reads
again and which would fill the disk (a 1000 × 64 cell's optimizer state alone is ~0.6 GB).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..errors import KiloError
from ..train.diagnostics import COLLAPSE_RATIO
from .metrics import as_float, curve, find_divergence, records_by_kind
from .runner import CELL_FILE, RESULT_FILE, write_json_atomic
from .shared import load_json


RUN_DIR = "run"  # the engine's out_dir: config.yaml, metrics.jsonl, loss_curve.png, checkpoints/


class CellInterrupted(Exception):
    """The cell was asked to stop; its checkpoint lets the next study run continue it."""


def run_cell(cell_dir: Path) -> dict:
    from ..train.loop import train

    spec = load_json(cell_dir / CELL_FILE)
    run_dir = cell_dir / RUN_DIR
    result = train(spec["config"], run_dir, resume="auto", progress=False)
    if result.stopped_by == "signal":  # stopped by the study (Ctrl-C): checkpointed, not finished
        raise CellInterrupted
    record = summarise(spec, result)
    if spec["zero_shot"] and result.export_dir is not None:
        record["zero_shot_limit"] = spec["zero_shot"]["limit"]
        try:
            record["zero_shot"] = zero_shot_scores(result.export_dir, spec["zero_shot"])
        except KiloError as error:  # the training result stands; the report says why the scores are missing
            record["zero_shot_error"] = str(error)
    write_json_atomic(cell_dir / RESULT_FILE, record)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return record


def summarise(spec: dict, result) -> dict:
    """The cell's result record: its verdict, final numbers and curves (see ``metrics.py`` for the divergence rule)."""
    metrics = records_by_kind(Path(result.metrics_path))
    train_records, valid_records = metrics.get("train", []), metrics.get("valid", [])
    diagnostics = metrics.get("diagnostics", [])
    curves = {
        "train_loss": curve(train_records, "loss"),
        "valid_loss": curve(valid_records, "loss"),
        **diagnostic_curves(diagnostics),
    }
    layer_records = metrics.get("layers", [])
    nonfinite_at = result.diverged_at if result.stopped_by == "nonfinite" else None
    divergence, diverged_at = find_divergence(curves["train_loss"], nonfinite_at)

    def first(name: str) -> float | None:
        return curves[name][0][1] if curves[name] else None

    def last(name: str) -> float | None:
        return curves[name][-1][1] if curves[name] else None

    return {
        "id": spec["id"],
        "axes": spec["axes"],
        "status": "diverged" if divergence else "trained",
        "diverged": divergence is not None,
        "divergence": divergence,
        "diverged_at": diverged_at,
        "steps": result.steps,
        "start_loss": first("train_loss"),
        "final_train_loss": _number(result.final_train_loss),
        "final_valid_loss": _number(result.final_valid_loss),
        "best_valid_loss": _number(result.best_valid_loss),
        "grad_norm_first_start": first("grad_norm_first"),
        "grad_norm_first_end": last("grad_norm_first"),
        "grad_norm_last_start": first("grad_norm_last"),
        "grad_norm_last_end": last("grad_norm_last"),
        "update_norm_first_end": last("update_norm_first"),
        "update_norm_last_end": last("update_norm_last"),
        "context_gain": valid_records[-1].get("context_gain") if valid_records else None,
        **layer_usage(layer_records),
        "parameters": next((event["parameters"] for event in metrics.get("event", []) if "parameters" in event), None),
        "wall_seconds": result.wall_seconds,
        "tokens_per_second": result.tokens_per_second,
        "skipped_steps": result.skipped_steps,
        "rollbacks": result.rollbacks,
        "curves": curves,
    }


def layer_usage(layer_records: list[dict]) -> dict:
    """How much of the depth learns, from the engine's ``layers`` records (``train/diagnostics.py``).

    live_fraction / used_blocks: at the last diagnostics step. collapse_step: the first diagnostics step at
    which the first block's gradient fell below 1e-10 of the last block's (None: never). profile: the last
    step's per-block values, for depth plots.
    """
    if not layer_records:
        return {"live_fraction": None, "used_blocks": None, "collapse_step": None, "profile": None}
    final = layer_records[-1]
    usage = final["usage"]
    collapse_step = next(
        (record["step"] for record in layer_records if as_float(record["usage"]["first_over_last"]) < COLLAPSE_RATIO), None
    )
    profile_keys = ("grad_norm", "grad_rms", "update_ratio", "activation_rms", "norm_gain")
    return {
        "live_fraction": usage["live_blocks"] / usage["blocks"],
        "used_blocks": usage["used_blocks"],
        "collapse_step": collapse_step,
        "profile": {"step": final["step"], **{key: final[key] for key in profile_keys if key in final}},
    }


def diagnostic_curves(diagnostics: list[dict]) -> dict[str, list[list[float]]]:
    """Gradient and update norms of the first and last layer over steps, from the engine's diagnostics records."""
    curves = {}
    for quantity in ("grad_norm", "update_norm"):
        for position in ("first", "last"):
            curves[f"{quantity}_{position}"] = [
                [record["step"], as_float(record[quantity][position])]
                for record in diagnostics
                if position in record.get(quantity, {})
            ]
    return curves


def zero_shot_scores(model_dir: Path, zero_shot: dict) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of the exported model, by the evaluation module (lm-evaluation-harness)."""
    from ..eval.zeroshot import evaluate_folder

    evaluation = evaluate_folder(model_dir, zero_shot["tasks"], Path(zero_shot["data_dir"]), limit=zero_shot["limit"])
    return {
        task: {metric: scores["value"] for metric, scores in outcome["metrics"].items()}
        for task, outcome in evaluation["tasks"].items()
    }


def _number(value) -> float | None:
    """A float, or None where the engine has none (json writes NaN and inf, which Python reads back)."""
    return None if value is None else float(value)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    try:
        run_cell(Path(arguments[0]))
    except KiloError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CellInterrupted:
        print("interrupted: checkpoint saved; the next run of the study continues this cell", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
