"""Local data for the zero-shot task definitions in ``tasks/*.yaml`` (layout of ../shared/data).

Each YAML names its files in ``dataset_kwargs`` relative to the data folder; lm-eval calls
``load_task_data`` with those plus ``data_dir`` from the TaskManager's metadata. Reading the files
here (not through ``datasets.load_dataset``) keeps runs offline and out of the HF cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import KiloError

TASKS_DIR = Path(__file__).parent / "tasks"
ZERO_SHOT_TASKS = tuple(sorted(path.stem for path in TASKS_DIR.glob("*.yaml")))


def task_definition(task: str) -> dict:
    """The task's YAML as a dict, ``!function`` references left unresolved."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if task not in ZERO_SHOT_TASKS:
        raise KiloError(f"unknown task {task!r}; known tasks: {', '.join(ZERO_SHOT_TASKS)}")
    return load_yaml(TASKS_DIR / f"{task}.yaml", resolve_func=False)


def task_files(task: str) -> list[str]:
    """The files (relative to the data folder) that ``task`` reads."""
    kwargs = task_definition(task)["dataset_kwargs"]
    return [kwargs[key] for key in ("data_file", "labels_file") if key in kwargs]


def check_task_files(task: str, data_dir: Path) -> list[Path]:
    """The task's files under ``data_dir``; a KiloError naming the first missing one and the fix."""
    paths = [data_dir / name for name in task_files(task)]
    for path in paths:
        if not path.is_file():
            raise KiloError(
                f"task {task} needs {path.relative_to(data_dir)}, not found in {data_dir}; "
                f"point --data-dir (or KILOLAYER_DATA) at the folder laid out like shared/data"
            )
    return paths


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def load_task_data(data_dir: str, split: str, data_file: str, labels_file: str | None = None, **metadata):
    """lm-eval ``custom_dataset``: {split: rows of ``data_file``}, with ``label`` from ``labels_file``.

    ``metadata`` is the rest of the task's metadata (version, config source), which lm-eval passes
    to every custom loader.
    """
    import datasets

    root = Path(data_dir)
    rows = read_jsonl(root / data_file)
    if labels_file:
        labels = (root / labels_file).read_text(encoding="utf-8").split()
        if len(labels) != len(rows):
            raise KiloError(f"{labels_file} has {len(labels)} labels for {len(rows)} rows of {data_file}; restore the original files")
        rows = [{**row, "label": int(label)} for row, label in zip(rows, labels)]
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
