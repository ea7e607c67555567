"""The run folder's resume policy: which differences make a command another run, and which kinds of run it refuses."""

import pytest
import yaml

from kilolayer.errors import KiloError
from kilolayer.train.distributed import Parallel
from kilolayer.train.run_folder import RunFolder, first_difference


def test_first_difference_skips_resumable_and_compute_path_keys_only():
    saved = {"kind": "pretrain", "model": {"num_layers": 4, "fused_loss": False}, "train": {"lr": 1e-3, "max_steps": 10}}
    same_run = {"kind": "pretrain", "model": {"num_layers": 4, "fused_loss": True}, "train": {"lr": 1e-3, "max_steps": 99}}
    assert first_difference(saved, same_run) is None
    assert first_difference(saved, {**same_run, "train": {"lr": 2e-3}}) == "train.lr=0.001 (this config: 0.002)"
    assert first_difference(saved, {**same_run, "model": {"num_layers": 8}}) == "model.num_layers=4 (this config: 8)"
    finetune = {"finetune": {"task": "mrpc", "limit": None}}
    assert first_difference(finetune, {"finetune": {"task": "qqp", "limit": None}}) == "finetune.task='mrpc' (this config: 'qqp')"
    assert first_difference({"model": {"old_key": 1}}, {"model": {}}) == "model.old_key=1 (this config: None)"


@pytest.mark.parametrize(
    ("saved", "kind", "message"),
    [
        ({"model": {}, "train": {}}, "finetune", "holds a pretraining run, not a fine-tuning run"),  # from before kind existed
        ({"kind": "finetune", "train": {}}, "pretrain", "holds a fine-tuning run, not a pretraining run"),
    ],
)
def test_a_run_of_the_other_kind_is_refused(tmp_path, saved, kind, message):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(KiloError, match=message):
        RunFolder(tmp_path, kind, Parallel(), print).find_resume("auto")


def test_an_old_finetune_folder_is_refused_with_its_reason(tmp_path):
    (tmp_path / "finetune.json").write_text("{}")
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(KiloError, match="fine-tuning run of an older kilolayer"):
        RunFolder(tmp_path, "finetune", Parallel(), print).find_resume("auto")
