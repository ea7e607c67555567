"""FSDP2 shards every parameter along dim 0: the rezero gate and DyT's α are 1-element tensors, not 0-dim scalars."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kilolayer.modeling import KiloConfig, KiloForCausalLM

SCRIPT = Path(__file__).with_name("fsdp_script.py")


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "scalar"), [("rezero", "gate"), ("dyt", "alpha")])
def test_one_element_parameters_train_under_fsdp2_on_two_processes_as_on_one(tmp_path, kind, scalar):
    """The rezero gate and DyT's α: FSDP2 cannot shard a 0-dim parameter."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from fsdp_script import batches, tiny_model, train
    finally:
        sys.path.remove(str(SCRIPT.parent))
    out = tmp_path / "fsdp.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(SCRIPT), str(out), kind]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    sharded = torch.load(out)

    reference = tiny_model(kind).train()
    train(reference, batches())  # one process, the whole batch
    scalars = [name for name in sharded if name.endswith(scalar)]
    assert scalars and all(sharded[name].abs().item() > 0 for name in scalars)  # they trained (a rezero gate starts at 0)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(sharded[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_a_checkpoint_with_a_0_dim_gate_still_loads(tmp_path):
    config = KiloConfig(arch="gpt", num_layers=2, hidden_size=16, num_heads=2, vocab_size=40, max_positions=16, scheme="rezero")
    model = KiloForCausalLM(config)
    state = model.state_dict()
    old = {name: (value.reshape(()) + 0.25 if name.endswith("gate") else value) for name, value in state.items()}
    model.load_state_dict(old)
    assert all(value.shape == (1,) and value.item() == 0.25 for name, value in model.state_dict().items() if name.endswith("gate"))
