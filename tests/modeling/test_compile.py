"""torch.compile of the blocks, as the trainer does it (``train.compile``): one graph serves every block."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM


@pytest.mark.parametrize("arch,scheme", [("gpt", "foundation_ln"), ("bert", "upscale_ln")])
def test_blocks_share_one_compiled_graph_and_compute_the_same(arch, scheme):
    torch.manual_seed(0)
    config = KiloConfig(arch=arch, num_layers=6, hidden_size=32, num_heads=2, vocab_size=50, max_positions=16, scheme=scheme)
    model = (KiloForCausalLM if arch == "gpt" else KiloForMaskedLM)(config).train()
    input_ids = torch.randint(0, 50, (2, 8))
    labels = input_ids if arch == "gpt" else torch.where(torch.rand(2, 8) < 0.5, input_ids, -100)
    labels[0, 0] = input_ids[0, 0]

    eager_loss = model(input_ids=input_ids, labels=labels).loss
    eager_grads = torch.autograd.grad(eager_loss, list(model.parameters()))
    torch._dynamo.reset()
    counter = CompileCounter()
    for block in model.model.layers:
        block.compile(backend=counter)
    compiled_loss = model(input_ids=input_ids, labels=labels).loss
    compiled_grads = torch.autograd.grad(compiled_loss, list(model.parameters()))

    assert counter.frame_count == 1, f"{counter.frame_count} graphs for {config.num_layers} blocks"
    torch.testing.assert_close(compiled_loss, eager_loss)
    for got, want in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(got, want)
