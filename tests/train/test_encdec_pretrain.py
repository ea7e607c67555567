"""`kilolayer pretrain --preset encdec-tiny`: span corruption through the same trainer, export, learning."""

import pytest
import torch
from trainkit import run_cli
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from kilolayer.data import prepare_data
from kilolayer.presets import resolve_config
from kilolayer.study.baselines import study_baselines
from kilolayer.train.config import TrainConfig
from kilolayer.train.task import default_cache_dir
from kilolayer.train.metrics import read_metrics

SETTINGS = ["train.max_steps=150", "train.eval_every=50", "train.lr=3e-3", "train.checkpoint_every=0", "train.log_every=10"]


@pytest.mark.slow
def test_encdec_tiny_pretrains_beats_the_target_unigram_and_exports(tmp_path, corpus):
    out = tmp_path / "run"
    overrides = [part for setting in SETTINGS for part in ("--set", setting)]
    result = run_cli("pretrain", "--preset", "encdec-tiny", "--data", str(corpus), "--out", str(out), *overrides)
    assert result.returncode == 0, result.stderr[-3000:]

    records = read_metrics(out / "metrics.jsonl")
    valid = [r["loss"] for r in records if r["kind"] == "valid"]
    layers = [r for r in records if r["kind"] == "layers"]
    assert layers and all(len(r["activation_rms"]) == len(r["grad_norm"]) == 4 for r in layers)  # 2 encoder + 2 decoder blocks
    assert all(0 < value < 100 for r in layers for value in r["activation_rms"])
    config = resolve_config("encdec-tiny", overrides=[f"train.data={corpus}", *SETTINGS])
    train_config = TrainConfig.from_dict(config["train"])
    baseline = study_baselines(prepare_data(train_config, "encdec", default_cache_dir()), train_config)
    assert len(valid) == 3 and valid[-1] < valid[0]
    assert valid[-1] < baseline.unigram, (valid, baseline)  # the unigram of the span-corruption targets

    folder = out / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    assert type(model).__name__ == "KiloForConditionalGeneration"
    assert model.config.vocab_size == len(tokenizer) and "<extra_id_0>" in tokenizer.get_vocab()
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id is not None
    source = tokenizer("def <extra_id_0>(self):\n    return <extra_id_1>", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**source, max_new_tokens=6, do_sample=False)
    assert generated.shape[0] == 1 and generated[0, 0] == model.config.decoder_start_token_id
