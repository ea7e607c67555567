"""Data: corpus → tokenizer → token shards → batches. ``prepare_data`` does all four for a training config.

Names are imported on first use, so that ``kilolayer --help`` does not pay for numpy, torch and transformers.
"""

from importlib import import_module

_EXPORTS = {
    "resolve_corpus": "corpus",
    "embedded_corpus": "corpus",
    "load_tokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
    "resolve_tokenizer": "tokenizer",
    "TokenShards": "shards",
    "build_token_shards": "shards",
    "CausalLMBatches": "batches",
    "MaskedLMBatches": "batches",
    "PreparedData": "prepare",
    "prepare_data": "prepare",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
