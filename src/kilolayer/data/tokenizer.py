"""Tokenizers: the reference GPT-2 BPE and BERT WordPiece vocabularies, an HF tokenizer folder, or one trained on the corpus.

Trained tokenizers follow the two papers' families so a model trained on them behaves like the
reference ones: ``bpe`` is GPT-2's byte-level BPE (no unknown tokens, exact round trip, ``<|endoftext|>``
ends documents) and ``wordpiece`` is BERT's lowercase WordPiece with ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from ..errors import KiloError
from ..paths import data_dir as reference_data_dir
from .cache import atomic_directory
from .corpus import fingerprint, iter_documents

REFERENCE_TOKENIZERS = {"gpt2": ("vocab.json", "merges.txt"), "bert-base-uncased": ("vocab.txt",)}
KINDS = {"gpt": "bpe", "bert": "wordpiece", "encdec": "bpe"}  # the trained kind each architecture needs (BART's is BPE)
EOS = "<|endoftext|>"
WORDPIECE_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
BYTE_ALPHABET_SIZE = 256
RECIPE_VERSION = 1  # part of the trained-tokenizer cache key: bump when the training recipe below changes


def load_tokenizer(spec: str, data_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """``gpt2`` / ``bert-base-uncased`` from ``<data_dir or $KILOLAYER_DATA>/tokenizers/``, or an HF tokenizer folder."""
    if spec in REFERENCE_TOKENIZERS:
        return _load_reference(spec, data_dir)
    folder = Path(spec).expanduser()
    if not (folder / "tokenizer.json").is_file():
        known = ", ".join([*REFERENCE_TOKENIZERS, "train"])
        raise KiloError(f"tokenizer {spec!r} is not one of {known} and {folder} holds no tokenizer.json; give a save_pretrained tokenizer folder or one of those names")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise KiloError(f"cannot load the tokenizer in {folder}: {str(error).splitlines()[0]}; re-save it with save_pretrained") from None


def train_tokenizer(files: list[Path], kind: str, vocab_size: int, out_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """Fit a ``bpe`` or ``wordpiece`` tokenizer of at most ``vocab_size`` tokens on the files' documents; save it to ``out_dir``."""
    if kind == "bpe":
        backend, trainer, special_tokens = _byte_level_bpe(vocab_size)
    elif kind == "wordpiece":
        backend, trainer, special_tokens = _wordpiece(vocab_size)
    else:
        raise KiloError(f"unknown tokenizer kind {kind!r}; use bpe (GPT-style) or wordpiece (BERT-style)")
    backend.train_from_iterator(iter_documents(files), trainer)
    if kind == "wordpiece":
        backend.post_processor = _bert_template(backend)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)
    if out_dir is not None:
        tokenizer.save_pretrained(out_dir)
    return tokenizer


def resolve_tokenizer(spec: str, arch: str, files: list[Path], vocab_size: int, cache_dir: Path) -> PreTrainedTokenizerFast:
    """The run's tokenizer: ``train`` fits one on ``files`` (cached by content hash), anything else is loaded.

    Checked for the special tokens the architecture needs, so a GPT never trains without document
    separators and a BERT never without [MASK].
    """
    if arch not in KINDS:
        raise KiloError(f"unknown architecture {arch!r}; use {', '.join(KINDS)}")
    if spec == "train":
        kind = KINDS[arch]
        folder = Path(cache_dir) / f"{kind}-{vocab_size}-{fingerprint(files, 'tokenizer', RECIPE_VERSION, kind, vocab_size)[:16]}"
        if not folder.is_dir():
            with atomic_directory(folder) as temp:
                train_tokenizer(files, kind, vocab_size, temp)
        tokenizer = load_tokenizer(str(folder))
    else:
        tokenizer = load_tokenizer(spec)
    _check_special_tokens(tokenizer, spec, arch)
    return tokenizer


def _load_reference(name: str, data_dir: Path | None) -> PreTrainedTokenizerFast:
    reference = reference_data_dir(data_dir)
    if reference is None:
        raise KiloError(f"tokenizer {name!r} is read from <reference data>/tokenizers/{name}/; set KILOLAYER_DATA to the reference data folder (layout of shared/data), or use train.tokenizer=train")
    folder = reference / "tokenizers" / name
    paths = [folder / file_name for file_name in REFERENCE_TOKENIZERS[name]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise KiloError(f"tokenizer {name!r}: {', '.join(missing)} not found; point KILOLAYER_DATA at the reference data folder (layout of shared/data)")
    # transformers 5 takes vocab=/merges= paths; the old vocab_file= keyword silently builds an empty tokenizer.
    if name == "gpt2":
        from transformers import GPT2TokenizerFast

        return GPT2TokenizerFast(vocab=str(paths[0]), merges=str(paths[1]))
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab=str(paths[0]))


def _byte_level_bpe(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size <= BYTE_ALPHABET_SIZE + 1:
        raise KiloError(f"a byte-level BPE needs more than {BYTE_ALPHABET_SIZE + 1} tokens (256 bytes + {EOS}), got vocab size {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=_show_progress())
    return backend, trainer, {"eos_token": EOS, "bos_token": EOS}


def _wordpiece(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = list(WORDPIECE_SPECIALS.values())
    minimum = 4 * len(specials)
    if vocab_size < minimum:
        raise KiloError(f"a WordPiece vocabulary needs at least {minimum} tokens, got vocab size {vocab_size}")
    backend = Tokenizer(models.WordPiece(unk_token=WORDPIECE_SPECIALS["unk_token"]))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    # Cap the single characters at a quarter of the vocabulary (BERT: 1000 of 30522): rare characters become
    # [UNK] instead of crowding out word pieces, and the vocabulary never grows past vocab_size.
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, limit_alphabet=min(1000, vocab_size // 4), show_progress=_show_progress())
    return backend, trainer, dict(WORDPIECE_SPECIALS)


def _show_progress() -> bool:
    """The trainer's progress bars are for terminals; elsewhere they print blank lines to stdout."""
    return sys.stderr.isatty()


def _bert_template(backend):
    """``[CLS] A [SEP]`` and ``[CLS] A [SEP] B [SEP]`` with segment ids, as BERT's tokenizer adds them."""
    from tokenizers import processors

    cls, sep = WORDPIECE_SPECIALS["cls_token"], WORDPIECE_SPECIALS["sep_token"]
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, backend.token_to_id(cls)), (sep, backend.token_to_id(sep))],
    )


def _check_special_tokens(tokenizer: PreTrainedTokenizerFast, spec: str, arch: str) -> None:
    needed = ["cls_token", "sep_token", "mask_token", "pad_token"] if arch == "bert" else ["eos_token"]
    missing = [name for name in needed if getattr(tokenizer, f"{name}_id") is None]
    if missing:
        raise KiloError(
            f"tokenizer {spec!r} has no {', '.join(missing)}, which {arch} training needs; "
            f"use a tokenizer that defines {'it' if len(missing) == 1 else 'them'} or tokenizer: train"
        )

