"""Run by test_hf_fsdp.py under torchrun (2 gloo processes): a tiny GPT with a scalar-like parameter (the rezero gate,
or DyT's α), FSDP2 per block and root, 3 SGD steps.

Each rank trains on its half of the batch; rank 0 writes the full (unsharded) parameters to argv[1]; argv[2] is
the model: rezero or dyt.
"""

import sys

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from kilolayer.modeling import KiloConfig, KiloForCausalLM


MODELS = {"rezero": {"scheme": "rezero"}, "dyt": {"scheme": "pre_ln", "norm": "dyt"}}


def tiny_model(kind: str) -> KiloForCausalLM:
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=2, hidden_size=16, num_heads=2, vocab_size=40, max_positions=16,
                        fused_loss=True, **MODELS[kind])
    return KiloForCausalLM(config)


def batches(steps: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 40, (4, 8), generator=generator) for _ in range(steps)]


def train(model, ids_per_step, lr: float = 0.5):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for ids in ids_per_step:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_model(sys.argv[2]).train()
    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    train(model, [ids[2 * rank : 2 * rank + 2] for ids in batches()])  # FSDP2 averages the two halves' gradients
    full = {name: value.full_tensor() for name, value in model.state_dict().items()}
    if rank == 0:
        torch.save(full, sys.argv[1])
    dist.destroy_process_group()
