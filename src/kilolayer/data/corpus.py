"""Text corpora: which files make a corpus, and how a file splits into documents.

A corpus is a file or a folder searched recursively for ``.txt`` and ``.jsonl`` files. A document is
a row of a ``.jsonl`` file (its ``"text"`` field), a whole ``.py`` file (source code has blank lines
inside its functions), or an article of any other file: text is cut at blank lines, and a block of one
short line that does not end a sentence (``.!?:``) is a heading that stays with the block after it.
That is the layout of ``corpus/enwiki_*.txt``, where a blank line also separates each title from its
article: the rule finds 35,961 articles in enwiki_train.txt (its README: 36k), where cutting at every
blank line would make 71,721 "documents", half of them bare titles.

The embedded default corpus is the Python standard library's top-level modules: the ``*.py`` files
directly in ``sysconfig.get_paths()["stdlib"]`` (``os.py``, ``typing.py``, ...), sorted by name, one
document per module — code plus its docstrings and comments, in English. It exists offline wherever a
full Python is installed (Python 3.11: 168 files, 4.7 MB); its exact content depends on the Python
version, which is why the tokenizer and token caches are keyed by content, not by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from ..errors import KiloError
from ..paths import data_dir

CORPUS_SUFFIXES = (".txt", ".jsonl")
BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
HEADING_MAX_CHARS = 100
SENTENCE_ENDS = (".", "!", "?", ":")


def resolve_corpus(data: str | os.PathLike | None) -> list[Path]:
    """The corpus files, checked readable UTF-8 with at least one document each, so errors surface before any work.

    ``data`` is a file or folder; None means ``$KILOLAYER_DATA/corpus`` (its train files only: the
    validation split comes from ``valid_fraction``) when that is set, else :func:`embedded_corpus`.
    """
    if data is not None:
        files = _corpus_files(Path(data).expanduser())
    elif (reference := data_dir()) is not None:
        files = sorted((reference / "corpus").glob("*_train.txt"))
        if not files:
            raise KiloError(f"KILOLAYER_DATA={reference} has no corpus/*_train.txt; point --data at a file or folder of text")
    else:
        files = embedded_corpus()
    for path in files:
        if not read_documents(path):
            raise KiloError(f"corpus file {path} holds no text (empty or only blank lines); remove it or point --data elsewhere")
    return files


def embedded_corpus() -> list[Path]:
    """The Python standard library's top-level modules, sorted by name (see the module docstring)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py"))
    if not files:
        raise KiloError(f"no Python sources found in {stdlib} for the embedded default corpus; pass --data with a file or folder of text")
    return files


def describe_corpus(data: str | os.PathLike | None, files: list[Path]) -> str:
    """A short name for logs and model cards: the path given, the reference corpus, or the embedded default."""
    size_mb = sum(path.stat().st_size for path in files) / 1e6
    if data is not None:
        source = str(data)
    elif data_dir() is not None:
        source = ", ".join(path.name for path in files)
    else:
        source = f"embedded default: Python {sysconfig.get_python_version()} standard library modules"
    return f"{source} ({len(files)} file{'s' if len(files) != 1 else ''}, {size_mb:.1f} MB)"


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise KiloError(f"cannot read corpus file {path}: {error.strerror}; fix its permissions or remove it") from None


def decode(path: Path, raw: bytes) -> str:
    """UTF-8 text; a bad byte is reported with its offset so it can be found with ``head -c``."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise KiloError(
            f"corpus file {path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); "
            "convert it with iconv or remove it"
        ) from None


def split_documents(path: Path, text: str) -> list[str]:
    """The documents of one file, stripped, empty ones dropped (see the module docstring for the rule per suffix)."""
    if path.suffix == ".jsonl":
        return _jsonl_documents(path, text)
    if path.suffix == ".py":
        return [text.strip()] if text.strip() else []
    return _text_documents(text)


def read_documents(path: Path) -> list[str]:
    return split_documents(path, decode(path, read_bytes(path)))


def iter_documents(files: list[Path]) -> Iterator[str]:
    """Every document of the files, in order, one file in memory at a time."""
    for path in files:
        yield from read_documents(path)


def _corpus_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.exists():
        raise KiloError(f"corpus path {path} does not exist; point --data at a file or folder of .txt/.jsonl text")
    if not path.is_dir():
        raise KiloError(f"corpus path {path} is neither a file nor a folder; point --data at a file or folder of text")
    files = sorted(file for file in path.rglob("*") if file.suffix in CORPUS_SUFFIXES and file.is_file())
    if not files:
        raise KiloError(f"corpus folder {path} holds no .txt or .jsonl files; point --data at a file or folder of text")
    return files


def _text_documents(text: str) -> list[str]:
    """Blank-line separated blocks, each heading kept with the block after it (joined by a blank line)."""
    documents, headings = [], []
    for block in (block.strip() for block in BLANK_LINE.split(text)):
        if not block:
            continue
        if _is_heading(block):
            headings.append(block)
        else:
            documents.append("\n\n".join([*headings, block]))
            headings = []
    if headings:
        documents.append("\n\n".join(headings))
    return documents


def _is_heading(block: str) -> bool:
    """One short line that does not end a sentence: a title such as "Jarred Shaw" or "Mercury (planet)"."""
    return "\n" not in block and len(block) <= HEADING_MAX_CHARS and not block.endswith(SENTENCE_ENDS)


def _jsonl_documents(path: Path, text: str) -> list[str]:
    documents = []
    # split("\n"), not splitlines(): a JSON string may hold a raw U+2028, which splitlines() breaks on
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise KiloError(f"{path} line {line_number} is not valid JSON ({error.msg}); each line must be an object with a \"text\" field") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise KiloError(f"{path} line {line_number} has no string \"text\" field; each line must be an object with a \"text\" field")
        if row["text"].strip():
            documents.append(row["text"].strip())
    return documents


def fingerprint(files: list[Path], *parameters) -> str:
    """sha256 of the files' bytes and the parameters: the key of every cache built from a corpus.

    Each file contributes its suffix (which sets how it splits into documents) and its length, so
    moving bytes from one file to the next changes the key.
    """
    digest = hashlib.sha256(repr(parameters).encode())
    for path in files:
        raw = read_bytes(path)
        digest.update(f"\0{path.suffix}\0{len(raw)}\0".encode())
        digest.update(raw)
    return digest.hexdigest()
