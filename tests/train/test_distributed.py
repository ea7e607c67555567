"""torchrun with 2 processes on CPU (gloo): DDP matches gradient accumulation; FSDP2 trains, checkpoints, resumes."""

import pytest
import torch
from safetensors.torch import load_file
from trainkit import events, run_training, run_torchrun, step_losses, tiny_config

pytestmark = pytest.mark.slow

STEPS = 6


def config(corpus, **train):
    # A constant LR after warmup, so that a run stopped early and resumed with more steps follows the same schedule.
    values = {"max_steps": STEPS, "schedule": "constant", "checkpoint_every": 2, "eval_every": 3, "diagnostics_every": 3, **train}
    return tiny_config(corpus, **values)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """One process, batch 4 with 2 accumulation steps: the data and math of 2 ranks × batch 4."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_training(config(corpus, batch_size=4, grad_accum=2), out)
    return out


def weights(path):
    return load_file(path)


def assert_close_losses(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    assert list(actual.values()) == pytest.approx(list(expected.values()), rel=1e-5)


def test_ddp_with_batch_b_per_rank_matches_one_process_accumulating_2(corpus, tmp_path, reference):
    out = tmp_path / "ddp"
    result = run_torchrun(config(corpus, batch_size=4, grad_accum=1, distributed="ddp"), out)
    assert result["steps"] == STEPS
    assert events(out, "start")[0]["world_size"] == 2
    assert_close_losses(step_losses(out), step_losses(reference))
    expected = weights(reference / "model" / "model.safetensors")
    actual = weights(out / "model" / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6)


def test_fsdp_trains_checkpoints_and_resumes(corpus, tmp_path, reference):
    out = tmp_path / "fsdp"
    run_torchrun(config(corpus, batch_size=4, distributed="fsdp", max_steps=4), out)
    checkpoint = out / "checkpoints" / "step-00000004"
    assert (checkpoint / ".metadata").is_file() and len(list(checkpoint.glob("*.distcp"))) == 2
    result = run_torchrun(config(corpus, batch_size=4, distributed="fsdp"), out)
    assert result["steps"] == STEPS
    assert events(out, "resume")[0]["step"] == 4
    assert_close_losses(step_losses(out), step_losses(reference))

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "model", trust_remote_code=True)
    expected = weights(reference / "model" / "model.safetensors")
    for name, value in model.state_dict().items():
        if name in expected:
            torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-6)
