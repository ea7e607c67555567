"""The exported model: an HF folder (``save_pretrained``: safetensors, config.json with auto_map and the
modeling code, the tokenizer) plus a README.md model card with the training facts. Written atomically:
a folder beside the old export, swapped in when complete."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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


def model_card(facts: dict) -> str:
    """A short README.md: what the model is, how it was trained (every fact from the run), how to load it."""
    config = facts["model_config"]
    rows = "\n".join(f"| {name} | {value} |" for name, value in facts["table"].items())
    head, kind = {
        "gpt": ("AutoModelForCausalLM", "GPT (causal LM)"),
        "bert": ("AutoModelForMaskedLM", "BERT (masked LM)"),
        "encdec": ("AutoModelForSeq2SeqLM", "encoder-decoder (span-corruption LM)"),
    }[config.arch]
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
