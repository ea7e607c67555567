"""No KV cache unless generating: scoring a 1000-layer model (perplexity, lm-eval) creates no cache object.

A cache keeps every layer's keys and values until the forward returns: memory O(layers) for nothing
when the logits are all a caller wants. Every ``DynamicCache`` made is counted.
"""

import pytest
import torch
from transformers.cache_utils import DynamicCache

from kilolayer.eval.perplexity import perplexity
from kilolayer.modeling import KiloConfig, KiloForCausalLM

pytestmark = pytest.mark.slow


@pytest.fixture
def caches_made(monkeypatch) -> list:
    made = []
    original = DynamicCache.__init__

    def counting(self, *args, **kwargs):
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(DynamicCache, "__init__", counting)
    return made


def deep_gpt(vocab_size: int) -> KiloForCausalLM:
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=1000, hidden_size=8, num_heads=2, vocab_size=vocab_size,
                        max_positions=64, scheme="foundation_ln", bos_token_id=1)
    return KiloForCausalLM(config).eval()


class DigitTokenizer:
    """Enough of a tokenizer for ``perplexity``: one token per digit, 1 as the document start."""

    bos_token_id, eos_token_id = 1, 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + int(digit) for digit in text if digit.isdigit()]}


def test_an_eval_forward_makes_a_cache_unless_told_not_to(caches_made):
    model = deep_gpt(16)
    ids = torch.randint(3, 13, (1, 6))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        assert caches_made == []
        model(input_ids=ids)  # config.use_cache, as in transformers: the counter sees it
    assert len(caches_made) == 1


def test_perplexity_of_a_1000_layer_model_makes_no_cache(caches_made):
    model = deep_gpt(16)
    result = perplexity(model, DigitTokenizer(), "3 1 4 1 5 9 2 6 5 3 5 8 9 7 9 3 2 3 8 4 6 2 6 4", window=8, stride=4)
    assert result["tokens"] == 24 and result["perplexity"] > 1
    assert caches_made == []


def test_lm_eval_scoring_of_a_1000_layer_model_makes_no_cache(caches_made, shared_data):
    from kilolayer.data.tokenizer import load_tokenizer
    from kilolayer.eval.zeroshot import evaluate_zero_shot

    tokenizer = load_tokenizer("gpt2", shared_data)
    model = deep_gpt(len(tokenizer))
    results = evaluate_zero_shot(model, tokenizer, ["piqa"], shared_data, limit=2, batch_size=4)
    assert results["piqa"]["examples"] == 2
    assert caches_made == []
    assert model.config.use_cache  # restored for the caller
