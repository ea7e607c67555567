"""Atomic folders: a cache or output folder either exists complete or not at all, whatever kills the process."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; when the block succeeds, fsync its files and rename it to ``final``.

    If ``final`` appeared meanwhile (another rank or process built the same content-keyed cache), the
    temporary copy is dropped and the existing one kept. On any error the temporary folder is removed.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield temp
        for file in temp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(temp, final)
        except OSError:
            if not final.is_dir():
                raise
        _fsync_folder(final.parent)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX keeps directory entries in the folder's own inode)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
