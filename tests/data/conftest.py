"""Small real corpora for the data tests: slices of the reference Wikipedia text, so tests take seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

SLICE_CHARS = 60_000  # about 30 articles: enough for a 600-token vocabulary and a 10 % valid split


@pytest.fixture(scope="session")
def wiki_slice(shared_data, tmp_path_factory) -> Path:
    """The first articles of enwiki_valid.txt, cut at an article boundary, as a .txt file."""
    text = (shared_data / "corpus" / "enwiki_valid.txt").read_text(encoding="utf-8")
    cut = text.index("\n\n", SLICE_CHARS)
    path = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    path.write_text(text[:cut] + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def gpt2(shared_data):
    from kilolayer.data.tokenizer import load_tokenizer

    return load_tokenizer("gpt2", shared_data)


@pytest.fixture(scope="session")
def bert(shared_data):
    from kilolayer.data.tokenizer import load_tokenizer

    return load_tokenizer("bert-base-uncased", shared_data)
