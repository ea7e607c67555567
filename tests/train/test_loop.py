"""The loop end to end in-process: both architectures, the precision/memory options, the run folder's files."""

import json

import pytest
import torch
import yaml
from trainkit import events, tiny_config

from kilolayer.presets import resolve_config
from kilolayer.train.loop import train
from kilolayer.train.metrics import read_metrics


def test_bert_trains_validates_and_exports_a_loadable_model(corpus, tmp_path):
    out = tmp_path / "bert"
    result = train(tiny_config(corpus, preset="bert-tiny", max_steps=6, eval_every=3), out, progress=False)
    assert result.steps == 6 and not result.diverged
    valid = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [3, 6] and valid[-1]["ppl"] == pytest.approx(2.718281828 ** valid[-1]["loss"], rel=1e-6)
    assert result.final_valid_loss == valid[-1]["loss"] and result.best_valid_loss == min(r["loss"] for r in valid)

    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model = AutoModelForMaskedLM.from_pretrained(out / "model", trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.vocab_size == len(tokenizer) and model.config.scheme == "upscale_ln"
    card = (out / "model" / "README.md").read_text()
    assert "| optimizer steps | 6 (max_steps 6) |" in card and "upscale_ln (alpha = " in card and "trained on the corpus" in card


def test_the_run_folder_holds_the_resolved_config_logs_and_curve(corpus, tmp_path):
    out = tmp_path / "gpt"
    result = train(tiny_config(corpus, max_steps=4), out, progress=False)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["vocab_size"] == 512 and saved["model"]["alpha"] == pytest.approx(0.974)
    assert saved["train"]["max_steps"] == 4 and "adam_eps" in saved["train"]  # defaults included
    assert saved["kind"] == "pretrain" and resolve_config(str(out / "config.yaml")) == {"model": saved["model"], "train": saved["train"]}
    kinds = {json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert kinds == {"event", "train", "valid", "diagnostics", "layers"}
    train_record = next(r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train")
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "step_seconds"} <= train_record.keys()
    records = read_metrics(out / "metrics.jsonl")
    assert all(abs(r["context_gain"]) < 10 for r in records if r["kind"] == "valid")
    layers = next(r for r in records if r["kind"] == "layers")
    assert len(layers["grad_norm"]) == 4 and layers["usage"]["blocks"] == 4
    assert {"grad_rms", "update_ratio", "activation_rms", "norm_gain"} <= layers.keys()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert result.tokens_per_second > 0 and result.metrics_path == out / "metrics.jsonl"
    assert events(out, "stop")[0]["steps"] == 4


@pytest.mark.parametrize(
    "options",
    [
        {"activation_checkpointing": True, "grad_accum": 2},
        {"precision": "bf16", "grad_clip": None, "schedule": "inverse_sqrt"},
    ],
    ids=["checkpointing+accumulation", "bf16+noclip"],
)
def test_training_options_run(corpus, tmp_path, options):
    result = train(tiny_config(corpus, max_steps=3, **options), tmp_path / "run", progress=False)
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.final_train_loss))


def test_activation_checkpointing_changes_no_number(corpus, tmp_path):
    plain = train(tiny_config(corpus, max_steps=3), tmp_path / "plain", progress=False)
    checkpointed = train(tiny_config(corpus, max_steps=3, activation_checkpointing=True), tmp_path / "ac", progress=False)
    assert plain.final_train_loss == checkpointed.final_train_loss


def test_max_minutes_stops_cleanly_with_checkpoint_and_export(corpus, tmp_path):
    result = train(tiny_config(corpus, max_steps=10_000, max_minutes=1e-9), tmp_path / "run", progress=False)
    assert result.stopped_by == "max_minutes" and result.steps == 0
    assert result.export_dir is not None and (result.export_dir / "model.safetensors").is_file()


def test_process_wide_settings_are_restored_after_the_run(corpus, tmp_path, monkeypatch):
    import matplotlib

    from kilolayer.train.process import flushes_denormals

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the run's threads (an explicit setting wins the policy)
    torch.set_flush_denormal(False)
    backend = matplotlib.get_backend()
    try:
        result = train(tiny_config(corpus, max_steps=2), tmp_path / "run", progress=False)
        assert result.steps == 2 and (tmp_path / "run" / "loss_curve.png").is_file()
        assert torch.get_num_threads() == 1 and not flushes_denormals()
        assert matplotlib.get_backend() == backend
        assert events(tmp_path / "run", "start")[0]["threads"].startswith("2 threads (OMP_NUM_THREADS)")
    finally:
        torch.set_flush_denormal(True)


def test_max_minutes_keeps_room_for_the_final_validation_checkpoint_and_export():
    """400 s in, 30 s steps, an 8-minute budget: the next step fits (430 s) but not with the validation after it."""
    import time
    from types import SimpleNamespace

    from kilolayer.train.config import TrainConfig
    from kilolayer.train.loop import Trainer

    trainer = SimpleNamespace(
        config=TrainConfig(max_minutes=8, eval_every=30, eval_batches=4), started=time.monotonic() - 400,
        last_step_seconds=30.0, validation_seconds=None, save_seconds=0.0, stop_signal=None,
        parallel=SimpleNamespace(world_size=1), task=SimpleNamespace(patience=None), evaluations_since_best=0,
    )  # fmt: skip
    assert Trainer._stop_reason(trainer) == "max_minutes"  # 400 + 30 + 4 batches × 30 s = 550 s > 480 s
    trainer.validation_seconds = 40.0  # measured: 470 s fits
    assert Trainer._stop_reason(trainer) is None
    trainer.save_seconds = 6.0  # the final checkpoint and the export: 470 + 2 × 6 = 482 s > 480 s
    assert Trainer._stop_reason(trainer) == "max_minutes"
    trainer.config = TrainConfig(max_minutes=8, eval_every=0, checkpoint_every=0)  # only the export to keep room for
    assert Trainer._stop_reason(trainer) is None
