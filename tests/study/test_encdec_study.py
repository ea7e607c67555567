"""`kilolayer study stability --arch encdec`: encoder-decoder cells, their target-unigram baseline; the depth study refuses encdec."""

from __future__ import annotations

import csv
import json
import math
import sysconfig
from pathlib import Path

import pytest

from kilolayer.cli import main


@pytest.mark.slow
def test_a_stability_cell_of_an_encoder_decoder(tmp_path, monkeypatch):
    monkeypatch.setenv("KILOLAYER_CACHE", str(tmp_path / "cache"))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = tmp_path / "corpus.txt"  # two standard-library modules, ≈ 0.1 MB: a tokenizer in a second
    corpus.write_text("\n\n".join((stdlib / name).read_text(encoding="utf-8") for name in ("textwrap.py", "difflib.py")), encoding="utf-8")
    out = tmp_path / "grid"
    status = main([
        "study", "stability", "--arch", "encdec", "--preset", "encdec-tiny", "--data", str(corpus), "--no-progress", "--control", "off",
        "--schemes", "deepnorm", "--depths", "4", "--lrs", "1e-3", "--set", "train.max_steps=3", "--set", "train.eval_batches=2",
        "--out", str(out),
    ])  # fmt: skip
    assert status == 0
    with open(out / "results.csv", newline="", encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["scheme"], row["depth"], row["steps"]) == ("deepnorm", "4", "3")
    assert math.isfinite(float(row["final_valid_loss"]))
    cell_config = next((out / "cells").rglob("config.yaml")).read_text(encoding="utf-8")
    assert "num_encoder_layers: 2" in cell_config and "num_decoder_layers: 2" in cell_config
    baselines = json.loads((out / "study.json").read_text())["baselines"]
    assert 0 < baselines["unigram"] < math.log(600) and baselines["bigram"] is None  # counted on span-corruption targets


def test_the_depth_study_refuses_an_encoder_decoder(capsys):
    assert main(["study", "depth", "--arch", "encdec", "--depths", "2,4"]) == 2
    assert "supports gpt and bert, not encdec" in capsys.readouterr().err
