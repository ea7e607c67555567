"""Replacing a file or folder without ever losing it: write the new version beside it, then swap it in.

Every file or folder kilolayer replaces (checkpoints, the exported model, config.yaml, metrics.jsonl,
study state) goes through here:

1. ``new_version(target)`` gives ``.NAME.new`` beside the target (after ``recover``);
2. the caller writes the complete new version there;
3. ``commit(new, target)`` fsyncs it, then swaps it in. A file is swapped by one ``os.replace``
   (atomic). A folder cannot be swapped atomically, so the old one is first renamed to ``.NAME.old``,
   the new one renamed into place, and only then the old one deleted.

A process killed anywhere in between leaves either the target, or ``.NAME.old`` and no target;
``recover(target)`` (run by ``new_version`` and by readers at startup) puts the old one back and
drops an unfinished ``.NAME.new``. ``atomic_replace`` does 1-3 in one call.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def _beside(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{suffix}")


def staging_path(target: Path) -> Path:
    """``.NAME.new``: where the new version of ``target`` is written (what ``new_version`` returns)."""
    return _beside(target, "new")


def leftover_targets(folder: Path) -> list[Path]:
    """The targets in ``folder`` whose replacement a kill may have interrupted (they have a ``.NAME.old/.new``)."""
    names = {path.name[1:].rsplit(".", 1)[0] for path in folder.glob(".*.old")} | {path.name[1:].rsplit(".", 1)[0] for path in folder.glob(".*.new")}
    return [folder / name for name in sorted(names)]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    handle = os.open(path, flags)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def recover(target: Path) -> None:
    """Undo a replacement that a kill interrupted: restore ``.NAME.old`` if the target is missing, drop leftovers."""
    old, new = _beside(target, "old"), _beside(target, "new")
    if old.exists():
        if target.exists():
            _remove(old)
        else:
            os.rename(old, target)
    if new.exists():
        _remove(new)


def new_version(target: Path) -> Path:
    """The empty path where the new version of ``target`` is to be written (its parent folder exists)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    return staging_path(target)


def commit(new: Path, target: Path) -> Path:
    """Swap the complete ``new`` version in for ``target``; the old one is deleted only once the new one is in place."""
    for path in [*new.rglob("*"), new] if new.is_dir() else [new]:
        if path.is_file() or path.is_dir():
            fsync(path)
    if new.is_dir() and target.exists():
        old = _beside(target, "old")
        os.rename(target, old)
        os.rename(new, target)
        fsync(target.parent)
        _remove(old)
    else:
        os.replace(new, target)
        fsync(target.parent)
    return target


def atomic_replace(target: Path, write: Callable[[Path], object]) -> Path:
    """``write(path)`` creates the new file or folder at ``path``; it then replaces ``target`` (see the module doc)."""
    new = new_version(target)
    try:
        write(new)
    except BaseException:
        if new.exists():
            _remove(new)
        raise
    return commit(new, target)


def write_text(target: Path, text: str) -> Path:
    """Replace a text file (UTF-8) atomically."""
    return atomic_replace(target, lambda path: path.write_text(text, encoding="utf-8"))
