"""CI's lowest-versions venv pins exactly the floors pyproject.toml declares, and runs where it says."""

import re
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def floors() -> dict[str, str]:
    """{package: lowest version} of the pyproject requirements written ``name>=X``."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    return {name.lower(): low for name, low in re.findall(r'"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)', text)}


def pins() -> dict[str, str]:
    lines = (REPO / ".ci" / "lowest.txt").read_text(encoding="utf-8").splitlines()
    return dict(line.lower().split("==") for line in lines if line and not line.startswith("#"))


def release(text: str) -> tuple[int, ...]:
    """"5.4.0" → (5, 4): trailing zeros dropped, so "5.4" and "5.4.0" compare equal."""
    parts = [int(part) for part in re.match(r"[0-9.]+", text).group().strip(".").split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def test_lowest_pins_are_the_pyproject_floors():
    declared, pinned = floors(), pins()
    assert set(pinned) == {"transformers", "lm-eval"}
    for name, low in pinned.items():
        assert release(low) == release(declared[name]), f"{name}: .ci/lowest.txt pins {low}, pyproject allows >= {declared[name]}"


def test_installed_transformers_is_within_the_range():
    assert release(version("transformers")) >= release(floors()["transformers"])
