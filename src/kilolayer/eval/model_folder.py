"""Open an exported model folder (``save_pretrained`` output + tokenizer) with one-line errors.

Evaluation and fine-tuning both start from such a folder; the checks here turn the failures users
actually hit (wrong folder, no tokenizer, masked model for a causal task) into messages with a fix.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import KiloError


def load_config(model_dir: str | Path):
    """The folder's model config (kilolayer's AutoConfig registration included)."""
    import kilolayer  # noqa: F401  (registers KiloConfig and the Kilo* models with the Auto classes)
    from transformers import AutoConfig

    folder = Path(model_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise KiloError(f"{folder} holds no config.json; give a folder written by save_pretrained (e.g. a training run's export)")
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise KiloError(f"cannot read the model config in {folder}: {str(error).splitlines()[0]}") from None


def load_folder_tokenizer(model_dir: str | Path):
    """The tokenizer saved beside the model; a KiloError when the folder has none."""
    from ..data.tokenizer import load_tokenizer

    folder = Path(model_dir).expanduser().resolve()
    if not (folder / "tokenizer.json").is_file():
        raise KiloError(
            f"{folder} has no tokenizer (tokenizer.json); save the tokenizer into the model folder "
            f"with tokenizer.save_pretrained('{folder}')"
        )
    return load_tokenizer(str(folder))


def load_causal_lm(model_dir: str | Path, purpose: str):
    """(model in eval mode, tokenizer) for causal-LM scoring; a masked (BERT) model is a KiloError."""
    from transformers import AutoModelForCausalLM

    config = load_config(model_dir)
    if not getattr(config, "is_causal", True):
        raise KiloError(
            f"{model_dir} holds a masked ({config.arch}) model, but {purpose} scores continuations with a causal LM; "
            f"evaluate a gpt model, or fine-tune this one with `kilolayer finetune`"
        )
    tokenizer = load_folder_tokenizer(model_dir)
    return AutoModelForCausalLM.from_pretrained(model_dir, config=config).eval(), tokenizer


def pick_device(requested: str | None = None):
    """``requested`` if given, else the GPU when there is one."""
    import torch

    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))
