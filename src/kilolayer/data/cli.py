"""``kilolayer tokenizer train``: fit a byte-level BPE or WordPiece tokenizer on a corpus and save it as an HF folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    tokenizer = subparsers.add_parser("tokenizer", help="train tokenizers on a corpus")
    commands = tokenizer.add_subparsers(dest="tokenizer_command", required=True, metavar="SUBCOMMAND")
    train = commands.add_parser(
        "train",
        help="fit a tokenizer on a corpus and save it as an HF tokenizer folder",
        description="Fit a tokenizer with the `tokenizers` library and save it with save_pretrained "
        "(load it later with `tokenizer: DIR` in a config, or AutoTokenizer.from_pretrained(DIR)).",
    )
    train.add_argument(
        "--data",
        help="a .txt/.jsonl file or a folder of them (default: $KILOLAYER_DATA/corpus, else the embedded Python-stdlib corpus)",
    )
    train.add_argument(
        "--kind",
        choices=["bpe", "wordpiece"],
        default="bpe",
        help="bpe: GPT-2-style byte-level BPE with <|endoftext|>; wordpiece: BERT-style lowercase with [PAD] [UNK] [CLS] [SEP] [MASK] (default: bpe)",
    )
    train.add_argument("--vocab-size", type=int, default=4096, help="the most tokens the vocabulary may hold, specials included (default: 4096)")
    train.add_argument("--out", required=True, help="a new (or empty) folder to save the tokenizer into; an existing tokenizer is never overwritten")
    train.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from ..errors import KiloError
    from .cache import atomic_directory
    from .corpus import resolve_corpus
    from .tokenizer import train_tokenizer

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise KiloError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    files = resolve_corpus(args.data)
    started = time.perf_counter()
    tokenizer = train_tokenizer(files, args.kind, args.vocab_size)
    with atomic_directory(out) as temp:
        tokenizer.save_pretrained(temp)
    size_mb = sum(path.stat().st_size for path in files) / 1e6
    print(f"trained a {args.kind} tokenizer of {len(tokenizer):,} tokens on {len(files)} file(s), {size_mb:.1f} MB, in {time.perf_counter() - started:.1f} s → {out}")
    return 0
