"""Tiny model folders (4 layers x 32) with the reference tokenizers, built once per session."""

from __future__ import annotations

import pytest
import torch

import kilolayer  # noqa: F401  (registers the Auto classes)
from kilolayer.data.tokenizer import load_tokenizer
from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM

TINY = {"num_layers": 4, "hidden_size": 32, "num_heads": 2}


@pytest.fixture(scope="session")
def gpt_folder(shared_data, tmp_path_factory):
    """A random tiny GPT with the GPT-2 BPE, saved the way a training run exports it."""
    tokenizer = load_tokenizer("gpt2", shared_data)
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", vocab_size=len(tokenizer), max_positions=256, scheme="foundation_ln", **TINY)
    folder = tmp_path_factory.mktemp("gpt-tiny")
    KiloForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bert_folder(shared_data, tmp_path_factory):
    """A random tiny BERT with the BERT uncased WordPiece."""
    tokenizer = load_tokenizer("bert-base-uncased", shared_data)
    torch.manual_seed(0)
    config = KiloConfig(arch="bert", vocab_size=len(tokenizer), max_positions=128, scheme="upscale_ln", **TINY)
    folder = tmp_path_factory.mktemp("bert-tiny")
    KiloForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
