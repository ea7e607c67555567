"""What both studies share: checking the configs before any work, preparing the data once, flat table rows.

All cells of a study read the same token shards with the same tokenizer: the parent prepares them
once, in the engine's cache (``$KILOLAYER_CACHE``, else ~/.cache/kilolayer), before the first cell
starts. The data layer caches by content hash, so each cell's engine then finds them ready instead
of building them once per cell, in parallel, racing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..presets import apply_overrides, build_model_config, merge, resolve_config
from .baselines import Baselines, study_baselines
from .runner import Cell, Outcome, check_unchanged, read_record, run_cells, write_json_atomic

# What a study cell needs from the engine, beneath the user's --set: a divergence recorded, not rescued by the
# guard; no wall-clock stop (every cell gets the same step budget); a loss every step, per-layer norms every 10;
# no exported model (a study reads only the metrics).
CELL_DEFAULTS = {
    "train": {"on_nonfinite": "stop", "max_minutes": None, "log_every": 1, "diagnostics_every": 10, "export": False}
}


def base_config(preset: str, config_file: str | None, data: str | None, overrides: list[str]) -> dict:
    """preset → config file → the cell defaults → ``data`` (--data) → --set, each later one winning key by key.

    The train section comes back complete (every TrainConfig field), so the grid's defaults (warmup,
    clipping) and the report show the values the engine will use. The model section stays as given:
    its derived constants (α, β) must follow each cell's depth.
    """
    from ..train.config import TrainConfig

    config = merge(resolve_config(preset, config_file), {"train": {**CELL_DEFAULTS["train"], "preset": Path(preset).stem}})
    if data:  # absolute: the cells' configs must name the same corpus from wherever the study is re-run
        config = merge(config, {"train": {"data": str(Path(data).expanduser().resolve())}})
    config = apply_overrides(config, overrides)
    model = {**config["model"], "arch": build_model_config(config["model"]).arch}  # explicit, for the reports
    return {"model": model, "train": TrainConfig.from_dict(config["train"]).to_dict()}


def tokens_per_step(train: dict) -> int:
    return train["batch_size"] * train["grad_accum"] * train["seq_len"]


def prepare_study(base: dict) -> tuple[dict, str, Baselines]:
    """Build (or find) the tokenizer and token shards every cell will use, and the baselines on them.

    Returns the base config with ``model.vocab_size`` set to the tokenizer's size (so parameter
    counts and width derivations are those of the models that will train), a description of the data,
    and the unigram/bigram cross-entropies of the validation batches every cell is scored on.
    """
    from ..data import prepare_data
    from ..train.config import TrainConfig
    from ..train.task import default_cache_dir

    train_config = TrainConfig.from_dict(base["train"])
    prepared = prepare_data(train_config, base["model"]["arch"], default_cache_dir())
    baselines = study_baselines(prepared, train_config)
    return merge(base, {"model": {"vocab_size": len(prepared.tokenizer)}}), prepared.description, baselines


def run_study(
    study_dir: Path,
    base: dict,
    data: str,
    baselines: Baselines,
    cells: list[Cell],
    jobs: int,
    threads_per_cell: int,
    progress: bool,
    report_only: bool = False,
) -> Outcome:
    """Check every cell's config, record the shared settings and baselines in study.json, run the cells that have no result.

    ``report_only``: run nothing and write nothing but the outcome of the cells finished so far (safe beside a
    running study of the same folder), the others listed as pending.
    """
    from ..train.config import TrainConfig

    for cell in cells:  # a typo in --set fails here, once, not in every worker
        build_model_config(cell.config["model"])
        TrainConfig.from_dict(cell.config["train"])
    check_unchanged(study_dir, cells)  # a refused re-run leaves study.json as it was
    if report_only:
        found = {cell.id: read_record(study_dir / "cells" / cell.id) for cell in cells}
        records = [record for record in found.values() if record is not None]
        pending = tuple(cell_id for cell_id, record in found.items() if record is None)
        return Outcome(records, {}, data=data, baselines=baselines.to_dict(), pending=pending)
    study_dir.mkdir(parents=True, exist_ok=True)
    record = {"base": base, "data": data, "baselines": baselines.to_dict(), "cells": [cell.id for cell in cells]}
    write_json_atomic(study_dir / "study.json", record)
    outcome = run_cells(study_dir, cells, jobs, threads_per_cell, progress)
    return dataclasses.replace(outcome, data=data, baselines=baselines.to_dict())


def flatten(record: dict) -> dict:
    """A table row: the cell's axes beside its scalar results (the curves stay under "curves")."""
    return {**record["axes"], **{key: value for key, value in record.items() if key != "axes"}}


def load_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))
