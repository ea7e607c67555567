"""Perplexity = exp(mean NLL), computed by hand token by token, with and without a sliding window."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from kilolayer.errors import KiloError
from kilolayer.eval.perplexity import perplexity, token_ids

TEXT = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were striking thirteen."


@pytest.fixture(scope="module")
def model_and_tokenizer(gpt_folder):
    return AutoModelForCausalLM.from_pretrained(gpt_folder).eval(), AutoTokenizer.from_pretrained(gpt_folder)


def nll_by_hand(model, ids: list[int], position: int, context_start: int) -> float:
    """−log P(ids[position] | ids[context_start:position]), from a forward pass on that context alone."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids[context_start:position]])).logits[0, -1]
    return -F.log_softmax(logits.float(), dim=-1)[ids[position]].item()


def test_whole_text_in_one_window(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = token_ids(tokenizer, TEXT)
    assert ids[0] == tokenizer.eos_token_id and len(ids) < model.config.max_positions
    nlls = [nll_by_hand(model, ids, position, 0) for position in range(1, len(ids))]
    result = perplexity(model, tokenizer, TEXT)
    assert result["tokens"] == len(ids) - 1
    assert result["perplexity"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-4)


@pytest.mark.parametrize("stride", [1, 3])
def test_sliding_window(model_and_tokenizer, stride):
    """Token p is scored in the first window [b, b + W) with b a multiple of the stride and b < p < b + W."""
    model, tokenizer = model_and_tokenizer
    window = 8
    ids = token_ids(tokenizer, TEXT)
    assert len(ids) > 3 * window
    nlls = []
    for position in range(1, len(ids)):
        begin = next(b for b in range(0, position, stride) if position < b + window)
        nlls.append(nll_by_hand(model, ids, position, begin))
    result = perplexity(model, tokenizer, TEXT, window=window, stride=stride)
    assert result["tokens"] == len(ids) - 1
    assert result["perplexity"] == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-4)


def test_stride_must_leave_context(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(KiloError, match="stride < window"):
        perplexity(model, tokenizer, TEXT, window=8, stride=8)
