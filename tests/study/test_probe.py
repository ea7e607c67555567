"""``kilolayer probe``: drop-one loss, angular distance and context gain of an exported model."""

from __future__ import annotations

import json
import os
import sysconfig
from pathlib import Path

import pytest
import torch

from kilolayer.cli import main
from kilolayer.study.probe import probe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def text_file() -> Path:
    """Held-out Wikipedia when the reference data is there, else a standard-library module (real English text)."""
    corpus = Path(os.environ.get("KILOLAYER_DATA", REPO.parent / "shared" / "data")) / "corpus" / "enwiki_valid.txt"
    return corpus if corpus.is_file() else Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, text_file) -> Path:
    """A 4-layer pre_ln GPT trained for a few steps by the real engine and exported with its tokenizer."""
    out = tmp_path_factory.mktemp("run")
    os.environ.setdefault("KILOLAYER_CACHE", str(tmp_path_factory.mktemp("cache")))
    status = main([
        "pretrain", "--preset", "gpt-tiny", "--data", str(text_file), "--out", str(out), "--no-progress",
        "--set", "model.scheme=pre_ln", "--set", "train.max_steps=4", "--set", "train.eval_every=0",
    ])  # fmt: skip
    assert status == 0
    return out / "model"


def identity_block(folder: Path, index: int, out: Path) -> Path:
    """A copy of the model whose block ``index`` writes nothing to the stream (pre_ln: x + 0)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    block = model.model.layers[index]
    with torch.no_grad():
        for projection in (block.attention.out, block.ffn.fc_out):
            projection.weight.zero_()
            projection.bias.zero_()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out


def test_an_identity_block_costs_nothing_when_dropped_and_does_not_turn_the_stream(exported, text_file, tmp_path):
    folder = identity_block(exported, 1, tmp_path / "identity")
    result = probe(folder, text_file, windows=8, progress=False)
    assert result.probed_layers == [0, 1, 2, 3] and len(result.angular_distance) == 4
    assert result.drop_one_increase[1] == pytest.approx(0.0, abs=1e-6)
    assert result.angular_distance[1] == pytest.approx(0.0, abs=1e-3)
    assert max(abs(value) for i, value in enumerate(result.drop_one_increase) if i != 1) > 1e-4
    assert min(value for i, value in enumerate(result.angular_distance) if i != 1) > 1e-3


def test_the_command_writes_json_and_a_plot(exported, text_file, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", str(exported), "--data", str(text_file), "--windows", "4", "--stride", "2", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["probed_layers"] == [0, 2] and result["windows"] == 4
    assert (out / "probe.png").read_bytes()[:4] == b"\x89PNG"
    assert "context gain" in capsys.readouterr().out


def test_bad_input_is_one_line(exported, text_file, tmp_path, capsys):
    assert main(["probe", str(exported), "--data", str(tmp_path / "missing.txt")]) == 2
    assert main(["probe", str(tmp_path), "--data", str(text_file)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "no config.json" in errors[1]
