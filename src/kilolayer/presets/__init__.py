"""Presets: YAML files with a ``model`` section (KiloConfig fields) and a ``train`` section (TrainConfig fields).

A run's configuration is resolved in one order: preset → ``--config file.yaml`` → ``--set section.key=value``.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import yaml

from ..errors import KiloError

PRESET_DIR = Path(__file__).parent
FINETUNE_PRESET_DIR = PRESET_DIR / "finetune"  # fine-tuning recipes: a train section only (the model is MODEL_DIR's)
SECTIONS = ("model", "train")


def list_presets(folder: Path = PRESET_DIR) -> list[str]:
    return sorted(path.stem for path in folder.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as error:
        raise KiloError(f"cannot read config {path}: {error}") from None
    except yaml.YAMLError as error:
        raise KiloError(f"config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if isinstance(loaded, dict) and loaded.get("kind") == "pretrain":  # a pretraining run's config.yaml is a preset
        loaded = {key: value for key, value in loaded.items() if key != "kind"}
    if not isinstance(loaded, dict) or set(loaded) - set(SECTIONS):
        raise KiloError(f"config {path} must be a mapping with only the sections {', '.join(SECTIONS)}")
    return loaded


def load_preset(name: str, folder: Path = PRESET_DIR) -> dict:
    """The preset called ``name`` in ``folder`` (or the YAML file at that path), as {"model": {...}, "train": {...}}."""
    path = Path(name)
    if not path.suffix:
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise KiloError(f"unknown preset {name!r}; known presets: {', '.join(list_presets(folder))}")
    elif not path.is_file():
        raise KiloError(f"config file {path} does not exist")
    config = _read_yaml(path)
    return {section: dict(config.get(section) or {}) for section in SECTIONS}


def merge(base: dict, update: dict) -> dict:
    """A copy of ``base`` with each section updated key by key from ``update``."""
    merged = copy.deepcopy(base)
    for section in SECTIONS:
        merged.setdefault(section, {}).update(update.get(section) or {})
    return merged


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings; values are parsed as YAML scalars (1e-3, true, null, gpt)."""
    updates: dict = {section: {} for section in SECTIONS}
    for override in overrides:
        key, sep, raw = override.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or section not in SECTIONS or not field:
            raise KiloError(f"--set {override!r}: expected section.key=value with section one of {', '.join(SECTIONS)}")
        updates[section][field] = parse_scalar(raw)
    return merge(config, updates)


def parse_scalar(raw: str):
    """A command-line value: int, then float (YAML 1.1 reads 1e-3 as a string), then any YAML scalar."""
    for number_type in (int, float):
        try:
            return number_type(raw)
        except ValueError:
            pass
    return yaml.safe_load(raw) if raw.strip() else None


def resolve_config(preset: str, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """preset → config file → overrides, each later one winning key by key."""
    config = load_preset(preset)
    if config_file:
        config = merge(config, load_preset(config_file))
    return apply_overrides(config, overrides or [])


def check_fields(section: str, values: dict, known: set[str]) -> None:
    """KiloError naming the first unknown key and the nearest known ones (a typo must not pass silently)."""
    import difflib

    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(sorted(known))}"
            raise KiloError(f"unknown {section} key {key!r}{hint}")


def build_model_config(model_section: dict, **overrides):
    """KiloConfig from a preset's model section; unknown keys and invalid values are KiloErrors."""
    from ..modeling import KiloConfig

    values = {**model_section, **overrides}
    check_fields("model", values, {field.name for field in dataclasses.fields(KiloConfig)})
    try:
        return KiloConfig(**values)
    except ValueError as error:
        raise KiloError(f"invalid model config: {error}") from None
