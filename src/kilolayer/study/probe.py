"""``kilolayer probe MODEL_DIR``: how many of a trained model's N layers matter, and does it read its input?

On a fixed set of text windows (tokenized with the model's own tokenizer, the engine's batch
classes, seed 0), for an exported GPT or BERT:

* drop-one loss increase Δℓ = loss(block ℓ replaced by the identity) − loss(full model): a block whose
  removal costs nothing does no work on this data;
* angular distance between consecutive hidden states, arccos(cos(h_ℓ−1, h_ℓ)) / π averaged over tokens
  (Gromov et al. 2024): 0 for a block that leaves the stream's direction unchanged;
* context gain: loss with each sequence's context taken from another sequence, minus with its own
  (``train/diagnostics.context_shuffled``): 0 for a model that ignores its input.

Writes ``probe.json`` and ``probe.png`` into ``--out`` and prints a summary.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from ..errors import KiloError

MATTERS_NATS = 0.01  # a block "matters" when removing it costs at least this much loss
MOVES_ANGLE = 0.01  # ... or "moves" the stream when it turns it by at least 1 % of π


@dataclass
class ProbeResult:
    model: str
    windows: int
    tokens_per_window: int
    loss: float
    context_gain: float
    probed_layers: list[int]
    drop_one_increase: list[float]  # one per probed layer
    angular_distance: list[float]  # one per layer (all of them: one forward gives every hidden state)
    layers_that_matter: int  # probed layers whose drop-one increase ≥ MATTERS_NATS
    layers_that_move: int  # layers whose angular distance ≥ MOVES_ANGLE

    def to_dict(self) -> dict:
        return asdict(self)


class SkippedBlock(nn.Module):
    """Stands in for a block: returns the residual stream it is given (drop-one ablation)."""

    def forward(self, hidden, *args, **kwargs):
        return hidden


def probe_batches(model_dir: Path, text_file: Path, tokenizer, arch: str, windows: int, seq_len: int) -> list[dict]:
    """``windows`` windows of ``seq_len`` tokens from ``text_file``, as the engine batches them (seed 0)."""
    import numpy as np

    from ..data.prepare import PreparedData
    from ..data.shards import TokenShards

    text = text_file.read_text(encoding="utf-8", errors="strict")
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    shards = TokenShards(Path(model_dir), ids, empty, len(tokenizer), tokenizer.eos_token_id or 0, 1, 0)
    prepared = PreparedData(tokenizer, shards, [text_file], str(text_file), arch, 0.15)
    batch_size = min(windows, 8)
    sampler = prepared.batches("train", batch_size, seq_len, seed=0)
    return [sampler.get_batch(index) for index in range(math.ceil(windows / batch_size))]


def mean_loss(model, batches: list[dict]) -> float:
    """Target-weighted mean loss over the batches (the model's own loss, shifted for GPT)."""
    import torch

    total = count = 0.0
    causal = model.config.is_causal
    with torch.no_grad():
        for batch in batches:
            labels = batch["labels"][:, 1:] if causal else batch["labels"]
            scored = float((labels != -100).sum())
            total += float(model(**batch, use_cache=False).loss) * scored
            count += scored
    return total / count


def angular_distances(model, batches: list[dict]) -> list[float]:
    """Per layer ℓ ≥ 1: the mean over tokens of arccos(cos(h_ℓ−1, h_ℓ)) / π."""
    import torch

    sums = None
    with torch.no_grad():
        for batch in batches:
            hidden = model.model(**_model_inputs(batch), output_hidden_states=True, use_cache=False).hidden_states
            stack = torch.stack([h.double() for h in hidden])  # (N + 1, B, T, D)
            cosine = torch.nn.functional.cosine_similarity(stack[:-1], stack[1:], dim=-1).clamp(-1, 1)
            angles = (torch.arccos(cosine) / math.pi).mean(dim=(1, 2))
            sums = angles if sums is None else sums + angles
    return (sums / len(batches)).tolist()


def _model_inputs(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


def probe(model_dir: str | Path, text_file: str | Path, windows: int = 16, seq_len: int | None = None, stride: int = 1, progress: bool = True) -> ProbeResult:
    """Measure a model folder on ``windows`` windows of ``text_file`` (every ``stride``-th layer is dropped in turn)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from ..train.diagnostics import context_shuffled
    from ..eval.model_folder import load_config, load_folder_tokenizer

    folder, text_file = Path(model_dir).expanduser(), Path(text_file).expanduser()
    if not text_file.is_file():
        raise KiloError(f"--data {text_file}: no such text file; give a UTF-8 .txt file to probe the model on")
    if windows < 1 or stride < 1:
        raise KiloError("--windows and --stride must be at least 1")
    config = load_config(folder)
    tokenizer = load_folder_tokenizer(folder)
    auto_class = AutoModelForCausalLM if config.is_causal else AutoModelForMaskedLM
    model = auto_class.from_pretrained(folder, config=config).eval()
    seq_len = seq_len or min(config.max_positions, 64)
    try:
        batches = probe_batches(folder, text_file, tokenizer, config.arch, windows, seq_len)
    except UnicodeDecodeError:
        raise KiloError(f"--data {text_file} is not UTF-8 text; give a .txt file") from None
    loss = mean_loss(model, batches)
    shuffled = mean_loss(model, [context_shuffled(batch, config.is_causal) for batch in batches])
    layers = model.model.layers
    probed = list(range(0, len(layers), stride))
    increases = []
    for index in tqdm(probed, desc="drop-one", disable=not progress):
        block = layers[index]
        layers[index] = SkippedBlock()
        try:
            increases.append(mean_loss(model, batches) - loss)
        finally:
            layers[index] = block
    angles = angular_distances(model, batches)
    return ProbeResult(
        model=str(folder),
        windows=sum(len(batch["input_ids"]) for batch in batches),
        tokens_per_window=seq_len,
        loss=loss,
        context_gain=shuffled - loss,
        probed_layers=probed,
        drop_one_increase=increases,
        angular_distance=angles,
        layers_that_matter=sum(increase >= MATTERS_NATS for increase in increases),
        layers_that_move=sum(angle >= MOVES_ANGLE for angle in angles),
    )


def plot_probe(result: ProbeResult, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6), dpi=120)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(result.probed_layers, result.drop_one_increase, marker=".", linewidth=0.8)
    top.axhline(MATTERS_NATS, color="grey", linestyle=":", linewidth=0.8)
    top.set_yscale("symlog", linthresh=1e-3)
    top.set_ylabel("loss increase when dropped (nats)")
    top.set_title(f"{Path(result.model).name}: loss {result.loss:.3f}, context gain {result.context_gain:.3f} nats")
    bottom.plot(range(len(result.angular_distance)), result.angular_distance, linewidth=0.8)
    bottom.axhline(MOVES_ANGLE, color="grey", linestyle=":", linewidth=0.8)
    bottom.set_yscale("log")
    bottom.set_ylabel("angular distance h(ℓ−1) → h(ℓ) / π")
    bottom.set_xlabel("layer (0-based)")
    figure.tight_layout()
    figure.savefig(path)


def probe_command(args) -> int:
    from ..paths import data_dir

    text_file = args.data
    if text_file is None:
        reference = data_dir(None)
        if reference is None:
            raise KiloError("give --data FILE (a .txt file to probe on), or set KILOLAYER_DATA to use its held-out Wikipedia text")
        text_file = reference / "corpus" / "enwiki_valid.txt"
    out = Path(args.out or Path(args.model_dir) / "probe")
    if out.exists() and not out.is_dir():
        raise KiloError(f"--out {out} is a file; give a folder for probe.json and probe.png")
    result = probe(args.model_dir, text_file, args.windows, args.seq_len, args.stride, progress=not args.no_progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    plot_probe(result, out / "probe.png")
    probed = len(result.probed_layers)
    print(
        f"loss {result.loss:.4f} nats on {result.windows} windows × {result.tokens_per_window} tokens; "
        f"context gain {result.context_gain:.4f} nats\n"
        f"{result.layers_that_matter} of {probed} probed layers cost ≥ {MATTERS_NATS} nats when dropped; "
        f"{result.layers_that_move} of {len(result.angular_distance)} turn the stream by ≥ {MOVES_ANGLE:.0%} of π\n"
        f"→ {out / 'probe.json'}, {out / 'probe.png'}"
    )
    return 0
