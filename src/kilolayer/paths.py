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
