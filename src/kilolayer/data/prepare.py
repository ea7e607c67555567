"""One call from a training config to ready batches: corpus → tokenizer → token shards → batch samplers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import KiloError
from .batches import CausalLMBatches, MaskedLMBatches
from .corpus import describe_corpus, resolve_corpus
from .shards import TokenShards, build_token_shards
from .span_corruption import SpanCorruptionBatches, add_sentinels
from .tokenizer import KINDS
from .tokenizer import resolve_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# The train/valid split is a property of the data, not of the run: with the run's seed, every seed of a
# seed sweep would hold out different documents (valid losses no longer comparable) and re-tokenize.
SPLIT_SEED = 0


@dataclass
class PreparedData:
    tokenizer: PreTrainedTokenizerFast
    shards: TokenShards
    corpus_files: list[Path]
    description: str
    arch: str
    mlm_probability: float
    sentinel_ids: list[int] | None = None  # encdec: the span-corruption sentinels added to the tokenizer

    def batches(self, split: str, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1):
        """CausalLMBatches (gpt), MaskedLMBatches (bert) or SpanCorruptionBatches (encdec) over the ``train`` or ``valid`` shard."""
        if split not in ("train", "valid"):
            raise KiloError(f"unknown split {split!r}; use train or valid")
        tokens = getattr(self.shards, split)
        if self.arch == "gpt":
            return CausalLMBatches(tokens, batch_size, seq_len, seed, rank=rank, world_size=world_size)
        tokenizer = self.tokenizer
        if self.arch == "encdec":
            return SpanCorruptionBatches(tokens, batch_size, seq_len, seed, sentinel_ids=self.sentinel_ids,
                                         eos_id=tokenizer.eos_token_id, rank=rank, world_size=world_size)
        return MaskedLMBatches(
            tokens,
            batch_size,
            seq_len,
            seed,
            cls_id=tokenizer.cls_token_id,
            sep_id=tokenizer.sep_token_id,
            mask_id=tokenizer.mask_token_id,
            pad_id=tokenizer.pad_token_id,
            vocab_size=len(tokenizer),
            special_ids=tokenizer.all_special_ids,
            mlm_probability=self.mlm_probability,
            rank=rank,
            world_size=world_size,
        )


def prepare_data(train_config, arch: str, cache_dir: Path) -> PreparedData:
    """Resolve the config's corpus and tokenizer and build (or reuse) the token shards under ``cache_dir``."""
    cache_dir = Path(cache_dir)
    files = resolve_corpus(train_config.data)
    tokenizer = resolve_tokenizer(train_config.tokenizer, arch, files, train_config.tokenizer_vocab_size, cache_dir / "tokenizers")
    separator_id = tokenizer.sep_token_id if arch == "bert" else tokenizer.eos_token_id
    shards = build_token_shards(files, tokenizer, cache_dir / "shards", train_config.valid_fraction, SPLIT_SEED, separator_id)
    # after the shards: the added tokens take new ids, so the shards stay shared with GPT runs
    sentinel_ids = add_sentinels(tokenizer, train_config.seq_len) if arch == "encdec" else None
    if train_config.tokenizer == "train":
        kind = {"bpe": "byte-level BPE", "wordpiece": "WordPiece"}[KINDS[arch]]
        tokenizer_text = f"{kind} trained on the corpus ({len(tokenizer):,} tokens)"
    else:
        tokenizer_text = f"{train_config.tokenizer} ({len(tokenizer):,} tokens)"
    if sentinel_ids:
        tokenizer_text += f", with {len(sentinel_ids)} span-corruption sentinels"
    description = (
        f"corpus: {describe_corpus(train_config.data, files)}; "
        f"{len(shards.train):,} train tokens in {shards.train_documents:,} documents, "
        f"{len(shards.valid):,} valid tokens in {shards.valid_documents:,}; tokenizer: {tokenizer_text}"
    )
    return PreparedData(tokenizer, shards, files, description, arch, train_config.mlm_probability, sentinel_ids)
