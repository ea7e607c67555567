"""generate(), the KV cache, and padding masks."""

import torch

from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM


def tiny_gpt(**changes):
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=3, hidden_size=32, num_heads=2, vocab_size=50,
                        max_positions=32, scheme="foundation_ln", **changes)
    return KiloForCausalLM(config).eval()


def test_greedy_generation_with_cache_equals_without():
    for position in ("learned", "rotary"):
        model = tiny_gpt(position_embedding=position)
        prompt = torch.randint(0, 50, (2, 5))
        cached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
        assert cached.shape == (2, 13)
        assert torch.equal(cached, uncached)


@torch.no_grad()
def test_cached_logits_equal_full_forward():
    model = tiny_gpt(position_embedding="rotary")
    ids = torch.randint(0, 50, (1, 9))
    full = model(input_ids=ids, use_cache=False).logits
    first = model(input_ids=ids[:, :6], use_cache=True)
    rest = model(input_ids=ids[:, 6:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(rest.logits, full[:, 6:], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_right_padding_does_not_change_the_real_tokens():
    model = tiny_gpt()
    ids = torch.randint(0, 50, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    alone = model(input_ids=ids).logits
    batched = model(input_ids=padded, attention_mask=mask).logits[:, :6]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bert_padding_mask_hides_padded_keys():
    torch.manual_seed(0)
    config = KiloConfig(arch="bert", num_layers=3, hidden_size=32, num_heads=2, vocab_size=50,
                        max_positions=32, scheme="upscale_ln")
    model = KiloForMaskedLM(config).eval()
    ids = torch.randint(0, 50, (1, 6))
    padded = torch.cat([ids, torch.randint(0, 50, (1, 3))], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    torch.testing.assert_close(
        model(input_ids=padded, attention_mask=mask).logits[:, :6], model(input_ids=ids).logits, rtol=1e-5, atol=1e-5
    )
