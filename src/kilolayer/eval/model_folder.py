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


def check_weights(model_dir: str | Path) -> None:
    """The folder holds safetensors weights whose headers read (before any model is built); KiloError otherwise."""
    from safetensors import SafetensorError, safe_open

    folder = Path(model_dir).expanduser()
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("pytorch_model*.bin")):
            raise KiloError(
                f"{folder} holds only pickle weights (pytorch_model.bin), which kilolayer does not load (unpickling can run code); "
                "re-save the model with save_pretrained (safetensors) where you trust the file"
            )
        raise KiloError(f"{folder} holds no model weights (model.safetensors); give a folder written by save_pretrained")
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                weights.keys()
        except (SafetensorError, OSError) as error:
            raise KiloError(f"{path} is not a readable safetensors file ({str(error).splitlines()[0]}); re-export the model") from None


def check_loaded(model, tokenizer, model_dir: str | Path) -> None:
    """Every weight finite (corrupted bytes give NaN) and every token id inside the model's vocabulary."""
    import torch

    broken = next((name for name, tensor in model.state_dict().items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)
    if broken:
        raise KiloError(f"{model_dir}: weight {broken} holds NaN or inf (a corrupted file, or a diverged run); re-export the model")
    vocab_size = model.config.vocab_size
    if len(tokenizer) > vocab_size:
        raise KiloError(
            f"{model_dir}: the tokenizer has {len(tokenizer):,} tokens but the model's vocabulary only {vocab_size:,}; "
            "save the tokenizer the model was trained with into the folder"
        )


def load_causal_lm(model_dir: str | Path, purpose: str):
    """(model in eval mode, tokenizer) for causal-LM scoring; a masked (BERT) or encoder-decoder model is a KiloError."""
    from transformers import AutoModelForCausalLM

    config = load_config(model_dir)
    if not getattr(config, "is_causal", True):
        raise KiloError(
            f"{model_dir} holds {'an encoder-decoder' if config.arch == 'encdec' else 'a masked'} ({config.arch}) model, "
            f"but {purpose} scores continuations with a causal LM; "
            f"evaluate a gpt model, or fine-tune this one with `kilolayer finetune`"
        )
    tokenizer = load_folder_tokenizer(model_dir)
    check_weights(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, config=config).eval()
    check_loaded(model, tokenizer, model_dir)
    return model, tokenizer


def pick_device(requested: str | None = None):
    """``requested`` if given (KiloError if this machine does not have it), else the GPU when there is one."""
    import torch

    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise KiloError(f"--device {requested!r} is not a device name; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KiloError(f"--device {requested}: torch sees no CUDA GPU on this machine; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise KiloError(f"--device {requested}: this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    if device.type not in ("cpu", "cuda"):
        raise KiloError(f"--device {requested}: kilolayer evaluates on cpu or cuda")
    return device
