"""The exported model: an HF folder (``save_pretrained``: safetensors, config.json with auto_map and the
modeling code, the tokenizer) plus a README.md model card with the training facts. Written atomically:
a folder beside the old export, swapped in when complete."""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_replace


def materialize(model_class: type, config, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain (unsharded) model holding ``state_dict``: built on the meta device, so no second init."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state_dict, assign=True)
    model.tie_weights()
    return model


def export_model(model: nn.Module, tokenizer, folder: Path, card: str) -> Path:
    """Save ``model``, ``tokenizer`` and the ``card`` into ``folder``, replacing an earlier export only when complete."""
    from transformers.utils import logging as hf_logging

    def write(temp: Path) -> None:
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise after training's own
        fused_loss = getattr(model.config, "fused_loss", False)
        model.config.fused_loss = False  # the exported model is for plain HF use: logits in training steps too
        try:
            model.save_pretrained(temp)
        finally:
            model.config.fused_loss = fused_loss
            if bars:
                hf_logging.enable_progress_bar()
        tokenizer.save_pretrained(temp)
        (temp / "README.md").write_text(card, encoding="utf-8")

    return atomic_replace(folder, write)


def card_facts(trainer, folder: Path) -> dict:
    """The model card's facts: the task's (title, kind, auto_class, its rows) and the training rows every run has."""
    config, parallel, guard = trainer.config, trainer.parallel, trainer.guard.state
    facts = trainer.task.card(trainer)
    flag = (
        f"; divergence flag up since step {guard.flagged_at} (smoothed loss above {config.divergence_factor:g} × its best)"
        if guard.flagged_at is not None
        else ""
    )
    training = {
        "optimizer steps": f"{trainer.step:,} (max_steps {config.max_steps:,})",
        "batch": (
            f"{config.batch_size} × {config.grad_accum} accumulation × {parallel.world_size} rank(s): "
            f"{trainer.task.step_size(config, parallel.world_size)}"
        ),
        "optimizer": (
            f"AdamW, lr {config.lr:g}, betas ({config.adam_beta1}, {config.adam_beta2}), eps {config.adam_eps:g}, "
            f"weight decay {config.weight_decay:g}"
        ),
        "schedule": (
            f"{config.warmup_steps} warmup steps, then {config.schedule} decay until step {config.decay_steps} "
            f"(min_lr_ratio {config.min_lr_ratio:g})"
        ),
        "precision": config.precision + (", activation checkpointing" if config.activation_checkpointing else ""),
        "stability guard": f"{guard.skipped_steps} skipped steps, {guard.rollbacks} rollbacks{flag}",
        "hardware": f"{parallel.world_size} × {parallel.device.type} ({platform.machine()}), torch {torch.__version__}",
        "training time": (
            f"{trainer.train_seconds:,.0f} s in optimizer steps of the last session "
            f"({trainer.train_seconds / max(trainer.session_steps, 1):.2f} s/step)"
        ),
        "kilolayer": __version__,
    }
    return {
        **facts,
        "table": {**facts["table"], **training},
        "model_config": trainer.task.model_config,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "data": trainer.task.description,
        "folder": str(folder),
    }


def model_card(facts: dict) -> str:
    """A short README.md: what the model is, how it was trained (every fact from the run), how to load it."""
    config = facts["model_config"]
    rows = "\n".join(f"| {name} | {value} |" for name, value in facts["table"].items())
    head, kind = facts["auto_class"], facts["kind"]
    return f"""---
library_name: transformers
tags: [kilolayer, {config.scheme}, deep-transformer]
---

# {facts["title"]}

A {config.num_layers}-layer {kind} trained with
kilolayer — very deep Transformers with the residual/normalization scheme as one switch.

Model: {config.summary()}; {facts["parameters"]:,} parameters.

## Training

| fact | value |
|---|---|
{rows}

Data: {facts["data"]}

## Use

```python
from transformers import AutoTokenizer, {head}

tokenizer = AutoTokenizer.from_pretrained("{facts["folder"]}")
model = {head}.from_pretrained("{facts["folder"]}", trust_remote_code=True)
```

The modeling code ships in this folder (`trust_remote_code=True`); the scheme and its constants are
stored in `config.json`, so the model loads with exactly the constants it was trained with.
"""
