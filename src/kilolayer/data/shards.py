"""Token shards: a corpus tokenized once into two flat memory-mapped arrays (train, valid), cached by content.

Documents are concatenated, each followed by ``separator_id`` (EOS for GPT, SEP for BERT), so batches
can pack whole windows without padding. Whole documents go to train or valid (a seeded choice of
exactly ``round(valid_fraction × documents)``), so no article is split across the two.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import KiloError
from .cache import atomic_directory
from .corpus import fingerprint, iter_documents, read_documents

FORMAT_VERSION = 1  # bump when the layout or the document rule changes: old caches then miss instead of misleading
ENCODE_BATCH = 512  # documents per call into the Rust tokenizer, which parallelises within a batch
SPLITS = ("train", "valid")


@dataclass
class TokenShards:
    """``train`` and ``valid``: 1-D token arrays (memory-mapped uint16, or uint32 for vocabularies over 65,536)."""

    path: Path
    train: np.ndarray
    valid: np.ndarray
    vocab_size: int
    separator_id: int
    train_documents: int
    valid_documents: int

    @classmethod
    def load(cls, path: Path) -> TokenShards:
        try:
            meta = json.loads((path / "meta.json").read_text())
            dtype = np.dtype(meta["dtype"])
            arrays = {split: _map(path / f"{split}.bin", dtype, meta[f"{split}_tokens"]) for split in SPLITS}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise KiloError(f"token cache {path} is damaged ({error}); delete that folder and it will be rebuilt") from None
        return cls(path, arrays["train"], arrays["valid"], meta["vocab_size"], meta["separator_id"], meta["train_documents"], meta["valid_documents"])


def build_token_shards(files: list[Path], tokenizer, cache_dir: Path, valid_fraction: float, seed: int, separator_id: int) -> TokenShards:
    """Tokenize ``files`` into train/valid shards under ``cache_dir``, or reuse the shards built from the same bytes and settings."""
    if not 0 <= valid_fraction < 1:
        raise KiloError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    backend = _plain_backend(tokenizer)
    key = fingerprint(files, "shards", FORMAT_VERSION, backend.to_str(), valid_fraction, seed, separator_id)
    folder = Path(cache_dir) / f"shards-{key[:16]}"
    if not folder.is_dir():
        document_count = sum(len(read_documents(path)) for path in files)
        is_valid = _choose_valid(document_count, valid_fraction, seed)
        with atomic_directory(folder) as temp:
            _tokenize(files, backend, is_valid, separator_id, len(tokenizer), temp)
    return TokenShards.load(folder)


def _plain_backend(tokenizer):
    """A copy of the Rust tokenizer with truncation and padding off: shards hold whole documents, and the
    cache key (its JSON) must not change because some caller padded a batch with the shared tokenizer."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def _choose_valid(document_count: int, valid_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask over documents: exactly round(fraction × count) of them, at least one when fraction > 0."""
    valid_count = max(1, round(document_count * valid_fraction)) if valid_fraction > 0 else 0
    if valid_count >= document_count:
        raise KiloError(
            f"the corpus has {document_count} document(s), too few to hold out {valid_count} for validation; "
            "add documents (blank-line separated articles or jsonl rows) or set valid_fraction to 0"
        )
    is_valid = np.zeros(document_count, dtype=bool)
    is_valid[np.random.default_rng(seed).choice(document_count, valid_count, replace=False)] = True
    return is_valid


def _tokenize(files: list[Path], backend, is_valid: np.ndarray, separator_id: int, vocab_size: int, folder: Path) -> None:
    from tqdm import tqdm

    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    tokens = dict.fromkeys(SPLITS, 0)
    documents = dict.fromkeys(SPLITS, 0)
    outputs = {split: open(folder / f"{split}.bin", "wb") for split in SPLITS}
    documents_so_far = 0
    try:
        with tqdm(total=len(is_valid), unit="doc", desc="tokenizing corpus") as progress:
            for batch in _batches(iter_documents(files), ENCODE_BATCH):
                for encoding in backend.encode_batch_fast(batch, add_special_tokens=False):
                    split = "valid" if is_valid[documents_so_far] else "train"
                    ids = np.array([*encoding.ids, separator_id], dtype=dtype)
                    outputs[split].write(ids.tobytes())
                    tokens[split] += len(ids)
                    documents[split] += 1
                    documents_so_far += 1
                progress.update(len(batch))
                progress.set_postfix(tokens=f"{sum(tokens.values()):,}", refresh=False)
    finally:
        for output in outputs.values():
            output.close()
    meta = {"format": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab_size, "separator_id": separator_id}
    meta.update({f"{split}_tokens": tokens[split] for split in SPLITS})
    meta.update({f"{split}_documents": documents[split] for split in SPLITS})
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    """Lists of ``size`` items (the last one shorter), across file boundaries so small files still batch up."""
    while batch := list(itertools.islice(items, size)):
        yield batch


def _map(path: Path, dtype: np.dtype, length: int) -> np.ndarray:
    """A read-only memory map of ``length`` tokens (numpy cannot map an empty file, so an empty split is a plain array)."""
    if path.stat().st_size != length * dtype.itemsize:
        raise ValueError(f"{path.name} holds {path.stat().st_size} bytes, expected {length * dtype.itemsize}")
    if length == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(length,))
