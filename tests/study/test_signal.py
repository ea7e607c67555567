"""``kilolayer study signal``: exact norms, the float64 measurement against an explicitly written network, the command."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch

from kilolayer.cli import main
from kilolayer.modeling import KiloConfig, KiloForCausalLM
from kilolayer.study.signal import exact_norm, measure

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ exact norms


def test_a_tiny_gradient_reads_as_itself_not_zero():
    tiny64 = torch.full((10,), 1e-200, dtype=torch.float64)
    assert torch.linalg.vector_norm(tiny64).item() == 0.0  # the naive norm squares 1e-200 to 0
    assert exact_norm([tiny64]) == pytest.approx(1e-200 * math.sqrt(10), rel=1e-12, abs=0)
    tiny32 = torch.tensor([1e-22, -1e-22], dtype=torch.float32)
    assert exact_norm([tiny32]) == pytest.approx(1e-22 * math.sqrt(2), rel=1e-6, abs=0)


def test_norm_of_several_tensors_and_the_edge_cases():
    a, b = torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64)
    assert exact_norm([a, b]) == 5.0
    assert exact_norm([torch.zeros(3), None]) == 0.0
    assert exact_norm([]) == 0.0
    assert math.isnan(exact_norm([torch.tensor([1.0, math.nan])]))
    assert exact_norm([torch.tensor([1.0, math.inf])]) == math.inf


# ------------------------------------------------------------------ the measurement against a hand-written pre_ln network

LAYERS, HIDDEN, HEADS, VOCAB, LENGTH = 3, 8, 2, 16, 6


def tiny_pre_ln() -> KiloForCausalLM:
    """A 3-layer pre_ln GPT in float64, biases and LN gains moved away from their init so that every term counts."""
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=LAYERS, hidden_size=HIDDEN, num_heads=HEADS, vocab_size=VOCAB,
                        max_positions=LENGTH, position_embedding="learned", scheme="pre_ln", hidden_act="gelu_new",
                        tie_word_embeddings=True)  # fmt: skip
    model = KiloForCausalLM(config).to(torch.float64)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
            elif "norm" in name:
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.mul_(10.0)  # larger weights: attention that is not uniform, a nonlinear GELU
    return model


def explicit_pre_ln(weights: dict[str, torch.Tensor], tokens: torch.Tensor):
    """The same network written out: x_ℓ = x + Attn(LN(x)), then x_ℓ += FFN(LN(x_ℓ)); loss, block outputs x_ℓ."""

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdim=True)
        variance = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(variance + 1e-5) * weights[prefix + ".weight"] + weights[prefix + ".bias"]

    def linear(x, prefix):
        return x @ weights[prefix + ".weight"].T + weights[prefix + ".bias"]

    batch, length = tokens.shape
    head = HIDDEN // HEADS
    x = weights["model.embed_tokens.weight"][tokens] + weights["model.embed_positions.weight"][:length]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    outputs = []
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}"
        q, k, v = linear(layer_norm(x, prefix + ".attention_residual.norm"), prefix + ".attention.qkv").split(HIDDEN, -1)
        q, k, v = (t.reshape(batch, length, HEADS, head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(head)).masked_fill(~causal, -math.inf)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, HIDDEN)
        x = x + linear(attended, prefix + ".attention.out")
        u = linear(layer_norm(x, prefix + ".ffn_residual.norm"), prefix + ".ffn.fc_in")
        gelu = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
        x = x + linear(gelu, prefix + ".ffn.fc_out")
        x.retain_grad()
        outputs.append(x)
    logits = layer_norm(x, "model.final_norm") @ weights["model.embed_tokens.weight"].T
    log_probs = logits[:, :-1].log_softmax(-1)
    loss = -log_probs.gather(-1, tokens[:, 1:, None]).mean()
    return loss, outputs


def test_pre_ln_measurement_equals_autograd_on_the_explicit_network():
    model = tiny_pre_ln()
    tokens = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(1))
    measured = measure(model, {"input_ids": tokens, "labels": tokens})

    weights = {name: p.detach().clone().requires_grad_() for name, p in model.named_parameters()}
    loss, outputs = explicit_pre_ln(weights, tokens)
    loss.backward()
    expected_grad = [
        math.sqrt(sum(float((g.grad**2).sum()) for name, g in weights.items() if name.startswith(f"model.layers.{layer}.")))
        for layer in range(LAYERS)
    ]
    expected_stream = [float(x.grad.norm()) for x in outputs]
    expected_rms = [float(x.detach().pow(2).mean().sqrt()) for x in outputs]

    assert measured["probe_loss"] == pytest.approx(loss.item(), rel=1e-12, abs=0)
    assert measured["grad_norm"] == pytest.approx(expected_grad, rel=1e-9, abs=0)
    assert measured["stream_grad_norm"] == pytest.approx(expected_stream, rel=1e-9, abs=0)
    assert measured["activation_rms"] == pytest.approx(expected_rms, rel=1e-12, abs=0)
    assert all(p.grad is None for p in model.parameters())  # measuring leaves no gradient behind


# ------------------------------------------------------------------ the command


def data_args() -> list[str]:
    corpus = Path(os.environ.get("KILOLAYER_DATA", REPO.parent / "shared" / "data")) / "corpus" / "enwiki_valid.txt"
    return ["--data", str(corpus)] if corpus.is_file() else []


TINY = ["--preset", "gpt-tiny", "--set", "train.batch_size=2", "--set", "train.seq_len=16", "--set", "model.num_heads=2"]


@pytest.mark.slow
def test_signal_command_writes_numbers_figure_and_resumes(tmp_path, study_cache, monkeypatch, capsys):
    out = tmp_path / "signal"
    arguments = ["study", "signal", *TINY, *data_args(), "--schemes", "pre_ln,post_ln", "--depths", "3",
                 "--steps", "0,2", "--out", str(out)]  # fmt: skip
    assert main(arguments) == 0
    with open(out / "signal.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 3  # schemes × steps × layers
    assert {row["scheme"] for row in rows} == {"pre_ln", "post_ln"}
    cells = json.loads((out / "signal.json").read_text())["cells"]
    for cell in cells:
        assert [m["step"] for m in cell["measurements"]] == [0, 2]
        assert len(cell["train_loss"]) == 2
        assert cell["measurements"][0]["probe_loss"] != cell["measurements"][1]["probe_loss"]  # it trained
    assert (out / "signal_L3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| pre_ln | 3 | 2 | " in (out / "summary.md").read_text()

    import kilolayer.study.signal as signal_module

    monkeypatch.setattr(signal_module, "run_cell", lambda *args: pytest.fail("a finished cell was run again"))
    assert main(arguments) == 0
    assert main([*arguments[:-2], "--out", str(out), "--set", "train.lr=0.5"]) == 2  # other settings, same folder
    assert "holds a signal study with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0,-1"], "--steps"),
        (["--schemes", "pre_ln,postln"], "unknown scheme postln"),
        (["--preset", "bert-tiny"], "study signal measures a causal LM"),
    ],
)
def test_bad_input_is_a_one_line_error(extra, message, tmp_path, study_cache, capsys):
    assert main(["study", "signal", *TINY, *data_args(), *extra, "--out", str(tmp_path / "s")]) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error


def test_a_config_field_added_later_does_not_orphan_finished_cells():
    from kilolayer.study.signal import _fingerprint

    before = {"model": {"num_layers": 3}, "train": {"lr": 0.01}, "steps": [0, 2], "data": "old wording"}
    assert _fingerprint(before) == _fingerprint({**before, "train": {"lr": 0.01, "decay_steps": None}, "data": "new"})
    assert _fingerprint(before) != _fingerprint({**before, "train": {"lr": 0.02}})
    assert _fingerprint(before) != _fingerprint({**before, "steps": [0, 3]})
