"""Where the reference data lives: ``--data-dir`` if given, else ``$KILOLAYER_DATA``, else nowhere."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import KiloError


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The reference-data folder (layout of ../shared/data), or None when none is configured."""
    chosen = explicit or os.environ.get("KILOLAYER_DATA")
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        source = "--data-dir" if explicit else "KILOLAYER_DATA"
        raise KiloError(f"{source} points to {path}, which is not a folder; give the folder that holds corpus/, eval/, tokenizers/")
    return path


def check_writable_folder(path: Path, what: str) -> None:
    """KiloError unless ``path`` is (or can be created as) a folder this process can write in.

    Checked by writing: the nearest existing folder on the way gets a temporary file, removed at once
    (``os.access`` says yes to root even on a read-only file system).
    """
    import tempfile

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise KiloError(f"{what} {path} is a file; give a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise KiloError(f"{what} {path} cannot be created: {existing} is a file; give another folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise KiloError(f"{what} {path} is not writable ({existing}: {error.strerror}); choose a folder you can write to") from None
