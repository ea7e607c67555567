"""1000-layer GPT and BERT at small width: forward + backward give finite loss and gradients."""

import pytest
import torch

from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM
from kilolayer.modeling.schemes import SCHEMES

# Every registered scheme is expected to stay finite at init at this depth: the Post-LN family is
# renormalised after each sublayer, the Pre-LN family adds bounded branches, ReZero starts as identity.
# (Which of them *train* well at depth is the stability study's question, not this test's.)
DEPTH, WIDTH = 1000, 32


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_thousand_layers_forward_backward_finite(arch, scheme):
    torch.manual_seed(0)
    config = KiloConfig(arch=arch, num_layers=DEPTH, hidden_size=WIDTH, num_heads=2, vocab_size=64,
                        max_positions=16, scheme=scheme)
    model = (KiloForCausalLM if arch == "gpt" else KiloForMaskedLM)(config)
    input_ids = torch.randint(0, 64, (2, 12))
    labels = input_ids if arch == "gpt" else torch.where(torch.rand(2, 12) < 0.3, input_ids, -100)
    labels[0, 0] = input_ids[0, 0]  # at least one target for the MLM loss
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # the first block receives gradient: the signal crosses all 1000 layers (ReZero's are zero by design)
    first = model.model.layers[0]
    if scheme != "rezero":
        assert first.ffn.fc_in.weight.grad.abs().sum() > 0
