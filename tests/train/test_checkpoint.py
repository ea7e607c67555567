"""Checkpoints survive torn writes and corruption: resume falls back to the previous valid one."""

import json
import signal

import pytest
import torch
from trainkit import events, run_training, start_training, step_losses, tiny_config

from kilolayer.errors import KiloError
from kilolayer.train import checkpoint
from kilolayer.train.loop import train


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(corpus, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(corpus, max_steps=12, checkpoint_every=4)
    process = start_training(config, out, env={"KILOLAYER_FAULTS": "kill_in_checkpoint@8"})
    process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL
    root = out / "checkpoints"
    assert (root / ".step-00000008.new").is_dir()  # the torn write: data files without a manifest
    assert not (root / "step-00000008").exists()
    folder, meta = checkpoint.latest_valid(root)
    assert (folder.name, meta["step"]) == ("step-00000004", 4)

    result = run_training(config, out)
    assert result["steps"] == 12
    assert events(out, "resume")[0]["step"] == 4
    assert not (root / ".step-00000008.new").exists()


def corrupt(path, truncate: bool) -> None:
    data = bytearray(path.read_bytes())
    if truncate:
        path.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("truncate", [True, False], ids=["truncated", "bit-flipped"])
def test_a_broken_newest_checkpoint_falls_back_to_the_previous(corpus, tmp_path, truncate):
    out = tmp_path / "run"
    train(tiny_config(corpus, max_steps=8, checkpoint_every=4, keep_checkpoints=3), out, progress=False)
    corrupt(out / "checkpoints" / "step-00000008" / "model.safetensors", truncate)
    with pytest.warns(UserWarning, match="step-00000008"):
        checkpoint.latest_valid(out / "checkpoints")

    result = train(tiny_config(corpus, max_steps=10, checkpoint_every=4, keep_checkpoints=3), out, progress=False)
    assert result.steps == 10
    resume = events(out, "resume")[0]
    assert resume["step"] == 4 and "step-00000008" in resume["warnings"][0]


def test_no_valid_checkpoint_is_an_error_and_nothing_is_touched(corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(corpus, max_steps=4, checkpoint_every=4, keep_checkpoints=1), out, progress=False)
    corrupt(out / "checkpoints" / "step-00000004" / "optimizer.pt", truncate=True)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    with pytest.raises(KiloError, match="no valid checkpoint"):
        train(tiny_config(corpus, max_steps=8, checkpoint_every=4), out, progress=False)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


def test_a_checkpoint_that_would_run_code_is_refused(corpus, tmp_path):
    """optimizer.pt is loaded with weights_only: a pickle with a callable is a KiloError, even with a valid manifest."""
    out = tmp_path / "run"
    train(tiny_config(corpus, max_steps=4, checkpoint_every=4, keep_checkpoints=1), out, progress=False)
    folder = out / "checkpoints" / "step-00000004"
    torch.save({"state": {}, "param_groups": [], "payload": print}, folder / "optimizer.pt")
    values = json.loads((folder / "meta.json").read_text())
    values["files"]["optimizer.pt"] = {"bytes": (folder / "optimizer.pt").stat().st_size, "crc32": checkpoint._crc32(folder / "optimizer.pt")}
    (folder / "meta.json").write_text(json.dumps(values))
    with pytest.raises(KiloError, match="refusing to unpickle"):
        train(tiny_config(corpus, max_steps=8, checkpoint_every=4), out, progress=False)


def test_resume_from_an_explicit_checkpoint_branches_into_a_new_folder(corpus, tmp_path):
    config = tiny_config(corpus, max_steps=8, checkpoint_every=4, keep_checkpoints=3)
    out = tmp_path / "run"
    train(config, out, progress=False)
    step_4 = out / "checkpoints" / "step-00000004"
    result = train(config, tmp_path / "branch", resume=str(step_4), progress=False)
    assert result.steps == 8 and events(tmp_path / "branch", "resume")[0]["step"] == 4
    original = step_losses(out)
    assert step_losses(tmp_path / "branch") == {step: loss for step, loss in original.items() if step > 4}
    with pytest.raises(KiloError, match="newer than step-00000004"):
        train(config, out, resume=str(step_4), progress=False)


def test_saving_a_step_again_never_loses_the_only_checkpoint(tmp_path, monkeypatch):
    """After a rollback with keep_checkpoints=1 the same step is saved again; a kill mid-swap must leave one."""
    import os

    from kilolayer.train.distributed import Parallel
    from kilolayer.train.faults import Faults

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    root = tmp_path / "checkpoints"

    def save():
        return checkpoint.save_checkpoint(
            root, 4, parallel=Parallel(), model=model, optimizer=optimizer, state={"guard": {}}, keep=1, faults=Faults()
        )

    final = save()
    real_rename = os.rename

    def die_before_the_new_folder_is_in_place(source, destination):
        if os.fspath(destination) == os.fspath(final):
            raise KeyboardInterrupt  # a kill right before the new step folder is renamed into place
        real_rename(source, destination)

    monkeypatch.setattr(os, "rename", die_before_the_new_folder_is_in_place)
    with pytest.raises(KeyboardInterrupt):
        save()
    monkeypatch.setattr(os, "rename", real_rename)
    checkpoint.remove_torn_writes(root)  # what a resume does first
    folder, meta = checkpoint.latest_valid(root)
    assert (folder.name, meta["step"]) == ("step-00000004", 4)
    assert sorted(path.name for path in root.iterdir()) == ["step-00000004"]
