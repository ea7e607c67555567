"""Every everyday mistake is one line naming the problem and the fix, exit code 2, and nothing on disk changes.

One table across the commands (pretrain, finetune, eval, study, info, tokenizer) and the Python API.
Each case runs against the same small world of files (a corpus, model folders, a GLUE-shaped data
folder, an earlier pretraining run); the whole world is compared byte for byte before and after.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from kilolayer.cli import main
from kilolayer.errors import KiloError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
NOT_WRITABLE = "/proc/kilolayer-out"  # even root cannot create files there


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Files the cases point at. Nothing here may change."""
    from kilolayer.data.tokenizer import train_tokenizer
    from kilolayer.modeling import KiloConfig, KiloForCausalLM

    root = tmp_path_factory.mktemp("world")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join((STDLIB / name).read_text(encoding="utf-8") for name in ("textwrap.py", "difflib.py")), encoding="utf-8")
    (root / "empty.txt").write_text("\n\n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "a-file").write_text("not a folder\n")

    tokenizer = train_tokenizer([corpus], "bpe", 300)
    torch.manual_seed(0)
    config = KiloConfig(arch="gpt", num_layers=2, hidden_size=32, num_heads=2, vocab_size=len(tokenizer), max_positions=64)
    good = root / "gpt"
    KiloForCausalLM(config).save_pretrained(good)
    tokenizer.save_pretrained(good)

    def variant(name: str, change) -> None:
        shutil.copytree(good, root / name)
        change(root / name)

    variant("no-weights", lambda folder: (folder / "model.safetensors").unlink())
    variant("pickle-only", lambda folder: (folder / "model.safetensors").rename(folder / "pytorch_model.bin"))
    variant("corrupt-header", lambda folder: (folder / "model.safetensors").write_bytes(b"\xff" * 64))
    variant("nan-weights", lambda folder: nan_weights(folder / "model.safetensors"))
    variant("small-vocab", lambda folder: small_vocabulary(folder))
    variant("no-config", lambda folder: (folder / "config.json").unlink())

    glue = root / "data" / "glue" / "mrpc"
    glue.mkdir(parents=True)
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": i % 2, "idx": i} for i in range(40)]
    for split in ("train", "test"):
        (glue / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    run = root / "pretraining-run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\ntrain: {}\n")
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 5.0}\n')
    (run / "model" / "model.safetensors").write_bytes(b"pretrained weights")

    full = root / "full-tokenizer"
    tokenizer.save_pretrained(full)
    return root


def nan_weights(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, path, metadata={"format": "pt"})


def small_vocabulary(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 100  # the weights keep 300 rows; the config is what a hand-edited folder says
    (folder / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    tensors = {name: tensor[:100] if tensor.shape[0] == 300 else tensor for name, tensor in load_file(folder / "model.safetensors").items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def snapshot(root: Path) -> dict:
    return {str(path.relative_to(root)): (path.read_bytes() if path.is_file() else None) for path in sorted(root.rglob("*"))}


PRETRAIN = ["pretrain", "--preset", "gpt-tiny", "--data", "{w}/corpus.txt", "--no-progress"]
FINETUNE = ["--task", "mrpc", "--data-dir", "{w}/data", "--limit", "20"]

# (command line with {w} for the world folder, expected text in the one-line error)
COMMAND_CASES = [
    # pretrain
    ([*PRETRAIN, "--out", "{w}/new", "--set", "train.lrr=0.1"], "did you mean lr"),
    ([*PRETRAIN, "--out", "{w}/new", "--set", "model.num_layer=3"], "unknown model key 'num_layer'"),
    (["pretrain", "--preset", "gpt-2k", "--out", "{w}/new"], "unknown preset 'gpt-2k'"),
    ([*PRETRAIN, "--out", "{w}/a-file"], "is a file"),
    ([*PRETRAIN, "--out", "{w}/a-file/run"], "cannot be created"),
    ([*PRETRAIN, "--out", NOT_WRITABLE], "is not writable"),
    ([*PRETRAIN, "--out", "{w}/new", "--preset", "bert-tiny", "--set", "train.seq_len=4096"], "exceeds model.max_positions"),
    ([*PRETRAIN, "--out", "{w}/new", "--set", "model.hidden_act=bogus"], "hidden_act 'bogus'"),
    ([*PRETRAIN, "--out", "{w}/new", "--set", "train.valid_fraction=0"], "set train.eval_every=0"),
    ([*PRETRAIN, "--out", "{w}/new", "--set", "train.schedule=cosin"], "must be one of cosine"),
    ([*PRETRAIN, "--out", "{w}/new", "--set", "train.max_steps=0"], "'max_steps' must be ≥ 1"),
    ([*PRETRAIN, "--out", "{w}/new", "--config", "{w}/missing.yaml"], "does not exist"),
    ([*PRETRAIN, "--out", "{w}/new", "--data", "{w}/empty.txt"], "empty.txt"),
    ([*PRETRAIN, "--out", "{w}/new", "--data", "{w}/nowhere.txt"], "nowhere.txt"),
    ([*PRETRAIN, "--out", "{w}/new", "--resume", "{w}/nowhere"], "no such checkpoint folder"),
    ([*PRETRAIN, "--out", "{w}/pretraining-run", "--set", "train.checkpoint_every=0"], "no checkpoint to continue from"),
    ([*PRETRAIN, "--out", "{w}/gpt"], "holds no kilolayer run"),
    # finetune
    (["finetune", "{w}/gpt", *FINETUNE, "--out", "{w}/pretraining-run"], "holds a pretraining run"),
    (["finetune", "{w}/gpt", *FINETUNE, "--out", "{w}/a-file"], "is a file"),
    (["finetune", "{w}/gpt", *FINETUNE, "--out", NOT_WRITABLE], "is not writable"),
    (["finetune", "{w}/gpt", *FINETUNE, "--out", "{w}"], "holds the model being fine-tuned"),
    (["finetune", "{w}/no-weights", *FINETUNE, "--out", "{w}/new"], "holds no model weights"),
    (["finetune", "{w}/pickle-only", *FINETUNE, "--out", "{w}/new"], "only pickle weights"),
    (["finetune", "{w}/corrupt-header", *FINETUNE, "--out", "{w}/new"], "not a readable safetensors file"),
    (["finetune", "{w}/gpt", *FINETUNE, "--out", "{w}/new", "--device", "cuda:7"], "--device cuda:7"),
    (["finetune", "{w}/gpt", "--task", "mrpc", "--data-dir", "{w}/nowhere", "--out", "{w}/new"], "not a folder"),
    (["finetune", "{w}/gpt", *FINETUNE, "--out", "{w}/new", "--set", "model.num_layers=3"], "takes its model from MODEL_DIR"),
    (["finetune", "{w}/gpt", *FINETUNE, "--out", "{w}/new", "--set", "train.max_steps=5"], "give --epochs instead"),
    (["finetune", "{w}/gpt", *FINETUNE, "--out", "{w}/new", "--set", "train.lrr=1e-3"], "did you mean lr"),
    # eval
    (["eval", "{w}/gpt", "--perplexity", "{w}/binary.txt", "--out", "{w}/new"], "is not UTF-8 text"),
    (["eval", "{w}/gpt", "--perplexity", "{w}/nowhere.txt", "--out", "{w}/new"], "no such file"),
    (["eval", "{w}/gpt", "--perplexity", "{w}/corpus.txt", "--out", "{w}/a-file"], "is a file"),
    (["eval", "{w}/gpt", "--perplexity", "{w}/corpus.txt", "--out", NOT_WRITABLE], "is not writable"),
    (["eval", "{w}/gpt", "--perplexity", "{w}/corpus.txt", "--out", "{w}/new", "--device", "cuda:7"], "--device cuda:7"),
    (["eval", "{w}/gpt", "--perplexity", "{w}/corpus.txt", "--out", "{w}/new", "--device", "tpu"], "is not a device name"),
    (["eval", "{w}/nan-weights", "--perplexity", "{w}/corpus.txt", "--out", "{w}/new"], "holds NaN or inf"),
    (["eval", "{w}/small-vocab", "--perplexity", "{w}/corpus.txt", "--out", "{w}/new"], "the tokenizer has"),
    (["eval", "{w}/no-config", "--perplexity", "{w}/corpus.txt", "--out", "{w}/new"], "holds no config.json"),
    (["eval", "{w}/pickle-only", "--perplexity", "{w}/corpus.txt", "--out", "{w}/new"], "only pickle weights"),
    # study
    (["study", "stability", "--preset", "gpt-tiny", "--data", "{w}/corpus.txt", "--out", "{w}/a-file"], "is a file"),
    (["study", "stability", "--preset", "gpt-tiny", "--schemes", "post_ln,postln", "--out", "{w}/new"], "unknown scheme postln"),
    # info
    (["info", "--preset", "gpt-2k"], "unknown preset"),
    (["info", "--preset", "gpt-tiny", "--step", "8by64"], "expected BATCHxLENGTH"),
    (["info", "--preset", "gpt-tiny", "--set", "model.hidden_act=bogus"], "hidden_act 'bogus'"),
    # tokenizer
    (["tokenizer", "train", "--data", "{w}/nowhere.txt", "--out", "{w}/new"], "nowhere.txt"),
    (["tokenizer", "train", "--data", "{w}/corpus.txt", "--out", "{w}/full-tokenizer"], "already exists"),
]


@pytest.mark.parametrize(("arguments", "expected"), COMMAND_CASES, ids=[f"{case[0][0]}-{i}" for i, case in enumerate(COMMAND_CASES)])
def test_a_bad_command_is_one_line_exit_2_and_changes_nothing(world, arguments, expected, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KILOLAYER_CACHE", str(tmp_path / "cache"))  # the cache may fill; the world may not change
    before = snapshot(world)
    status = main([argument.format(w=world) for argument in arguments])
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if line.startswith("kilolayer")]  # progress bars aside
    assert status == 2, stderr[-2000:]
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith(f"kilolayer {arguments[0]}: error: "), stderr[-2000:]
    assert expected in lines[0]
    assert snapshot(world) == before


def test_environment_mistakes_are_one_line_errors(world, capsys, monkeypatch):
    before = snapshot(world)
    monkeypatch.setenv("KILOLAYER_CACHE", NOT_WRITABLE)
    assert main([*[a.format(w=world) for a in PRETRAIN], "--out", f"{world}/new"]) == 2
    monkeypatch.setenv("KILOLAYER_CACHE", str(world / "cache-that-may-be-made"))
    monkeypatch.delenv("KILOLAYER_DATA", raising=False)
    assert main([*[a.format(w=world) for a in PRETRAIN], "--out", f"{world}/new", "--set", "train.tokenizer=gpt2"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "token cache (KILOLAYER_CACHE)" in errors[0] and "--data-dir" not in errors[1]
    assert "set KILOLAYER_DATA" in errors[1]
    shutil.rmtree(world / "cache-that-may-be-made", ignore_errors=True)
    assert snapshot(world) == before


def bad_train_key(world):
    from kilolayer.presets import resolve_config
    from kilolayer.train.loop import train

    config = resolve_config("gpt-tiny")
    config["train"]["lrr"] = 0.1
    train(config, world / "new")


def bad_resume(world):
    from kilolayer.presets import resolve_config
    from kilolayer.train.loop import train

    train(resolve_config("gpt-tiny"), world / "new", resume="sometimes")


API_CASES = [
    (lambda world: __import__("kilolayer").KiloConfig(num_layer=3), TypeError, "did you mean num_layers"),
    (lambda world: __import__("kilolayer").KiloConfig(hidden_act="bogus"), ValueError, "hidden_act 'bogus'"),
    (lambda world: __import__("kilolayer.presets", fromlist=["x"]).resolve_config("gpt-2k"), KiloError, "unknown preset"),
    (lambda world: __import__("kilolayer.train.config", fromlist=["x"]).TrainConfig(schedule="cosin"), KiloError, "must be one of"),
    (bad_train_key, KiloError, "did you mean lr"),
    (bad_resume, KiloError, "no such checkpoint folder"),
]


@pytest.mark.parametrize(("call", "error", "expected"), API_CASES, ids=[case[2] for case in API_CASES])
def test_a_bad_python_call_raises_one_line_and_changes_nothing(world, call, error, expected):
    before = snapshot(world)
    with pytest.raises(error) as raised:
        call(world)
    assert expected in str(raised.value) and "\n" not in str(raised.value)
    assert snapshot(world) == before
