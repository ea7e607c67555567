"""Fixtures for the training tests: a small real corpus and a private cache (helpers are in trainkit.py)."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # test modules import trainkit (pytest runs with --import-mode=importlib)

CORPUS_MODULES = ("textwrap.py", "argparse.py", "difflib.py", "dataclasses.py", "functools.py")  # ≈ 0.3 MB of text


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Tokenizers and shards go to a per-session cache (inherited by the subprocesses); one thread per process,
    since on a shared 2-core machine a second spinning OpenMP thread makes tiny steps ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KILOLAYER_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.delenv("KILOLAYER_FAULTS", raising=False)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small real-text corpus: a few standard-library modules, articles split at blank lines."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text("\n\n".join((stdlib / name).read_text(encoding="utf-8") for name in CORPUS_MODULES), encoding="utf-8")
    return path
