"""Per-block diagnostics: norms where 0 means 0, usage counts, and the context gain."""

import math

import torch

from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM
from kilolayer.train.diagnostics import LayerDiagnostics, context_shuffled, usage, within_decades
from kilolayer.train.distributed import Parallel


def tiny_gpt(layers: int = 4, **overrides) -> KiloForCausalLM:
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=layers, hidden_size=16, num_heads=2, vocab_size=50, max_positions=16, **overrides)
    return KiloForCausalLM(config)


def backward(model, batch) -> None:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()


def causal_batch(rows: int = 4, length: int = 12, seed: int = 1) -> dict:
    ids = torch.randint(0, 50, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


def test_a_gradient_of_1e_22_reads_1e_22_with_denormals_flushed():
    model = tiny_gpt(layers=2)
    diagnostics = LayerDiagnostics(model, Parallel())
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    first = next(model.model.layers[0].parameters())
    first.grad.view(-1)[:4] = 1e-22  # float32 holds it; its square (1e-44) does not survive flush-to-zero
    previous = torch.set_flush_denormal(True)
    try:
        norms = diagnostics.grad_norms()
    finally:
        torch.set_flush_denormal(previous)
    assert math.isclose(norms[0].item(), 2e-22, rel_tol=1e-6)
    assert norms[1].item() == 0.0


def test_frozen_lower_blocks_are_reported_unused():
    model = tiny_gpt(layers=6)
    for block in model.model.layers[:3]:
        block.requires_grad_(False)
    diagnostics = LayerDiagnostics(model, Parallel())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    backward(model, causal_batch())
    grads = diagnostics.grad_norms()
    before = diagnostics.snapshot()
    optimizer.step()
    ratio = diagnostics.update_norms(before) / diagnostics.parameter_norms()
    counts = usage(grads.tolist(), diagnostics.grad_rms(grads).tolist(), ratio.tolist(), adam_eps=1e-8)
    assert (counts.blocks, counts.live_blocks, counts.used_blocks) == (6, 3, 3)
    assert counts.first_over_last == 0.0 and counts.collapsed


def test_usage_counts_on_hand_made_profiles():
    assert within_decades([1.0, 1e-3, 1e-4, 0.0]) == [True, True, False, False]
    counts = usage(grad_norm=[1e-12, 1e-1, 1.0], grad_rms=[1e-14, 1e-3, 1e-2], update_ratio=[1e-3, 1e-3, 1e-3], adam_eps=1e-8)
    assert (counts.live_blocks, counts.used_blocks) == (2, 2)
    assert math.isclose(counts.first_over_last, 1e-12) and counts.collapsed
    assert not usage([1e-9, 1.0], [1.0, 1.0], [1.0, 1.0], 1e-8).collapsed


def test_summaries_over_the_depth():
    assert LayerDiagnostics.summarize([3.0, 1.0, 2.0, 5.0]) == {
        "first": 3.0, "last": 5.0, "min": 1.0, "median": 2.5, "max": 5.0, "argmin": 1, "argmax": 3,
    }  # fmt: skip
    assert LayerDiagnostics.summarize([math.nan, 2.0])["min"] == 2.0  # blocks without a value (no norm gain) are skipped


def context_gain(model, batch, causal: bool) -> float:
    model.eval()
    with torch.no_grad():
        return (model(**context_shuffled(batch, causal)).loss - model(**batch).loss).item()


def test_context_gain_is_zero_for_a_model_that_ignores_its_input():
    model = tiny_gpt()
    with torch.no_grad():  # every token embeds to the same vector: the output no longer depends on the input
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight[:1].expand_as(model.model.embed_tokens.weight))
    assert abs(context_gain(model, causal_batch(), causal=True)) < 1e-6
    assert abs(context_gain(tiny_gpt(), causal_batch(), causal=True)) > 1e-4  # a random model does depend on its input


def test_masked_lm_shuffling_keeps_the_masked_positions():
    ids = torch.arange(12).view(3, 4)
    labels = torch.full_like(ids, -100)
    labels[:, 2] = 7
    shuffled = context_shuffled({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}, roll_whole_input=False)
    assert torch.equal(shuffled["input_ids"][:, 2], ids[:, 2])
    assert torch.equal(shuffled["input_ids"][:, 0], ids.roll(1, 0)[:, 0])
    config = KiloConfig(arch="bert", num_layers=2, hidden_size=16, num_heads=2, vocab_size=50, max_positions=16)
    assert KiloForMaskedLM(config)(**shuffled).loss.isfinite()


def test_encoder_decoder_shuffling_rolls_the_encoder_input_only():
    batch = {
        "input_ids": torch.arange(12).view(3, 4),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]),
        "labels": torch.arange(6).view(3, 2),
        "decoder_input_ids": torch.arange(6).view(3, 2),
    }
    shuffled = context_shuffled(batch, roll_whole_input=True)
    assert torch.equal(shuffled["input_ids"], batch["input_ids"].roll(1, 0))
    assert torch.equal(shuffled["attention_mask"], batch["attention_mask"].roll(1, 0))
    assert shuffled["labels"] is batch["labels"] and shuffled["decoder_input_ids"] is batch["decoder_input_ids"]
