"""Token-level perplexity of a causal LM on a text file, exp(mean NLL), with a sliding window.

A text longer than the context is read in windows of ``window`` tokens that advance by ``stride``;
each token is scored once, in the first window that contains it beyond that window's first
position, so after the first window every token keeps at least ``window - stride`` tokens of
context (``stride`` = 1 gives every token the full ``window - 1``).
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import KiloError


def token_ids(tokenizer, text: str) -> list[int]:
    """The text's tokens after a document-start token (BOS, else EOS as GPT-2 uses it), so the
    first real token is scored as well; a tokenizer without either leaves it unscored."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([start] if start is not None else []) + ids


def perplexity(model, tokenizer, text: str, window: int | None = None, stride: int | None = None, progress: bool = False) -> dict:
    """{"perplexity", "nll_per_token", "tokens", "window", "stride"} of ``text`` under ``model``."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    window = window or model.config.max_position_embeddings
    stride = stride or max(1, window // 2)
    if window < 2 or not 1 <= stride < window:
        raise KiloError(f"perplexity needs window >= 2 and 1 <= stride < window, got window={window} stride={stride}")
    ids = torch.tensor(token_ids(tokenizer, text), dtype=torch.long)
    if len(ids) < 2:
        raise KiloError("the text has fewer than two tokens; perplexity needs a longer text")
    starts = range(0, max(1, len(ids) - window + stride), stride)
    total_nll, scored_until = 0.0, 1  # ids[0] has no context and is never a target
    with torch.inference_mode():
        for begin in tqdm(starts, desc="perplexity windows", disable=not progress):
            end = min(begin + window, len(ids))
            chunk = ids[begin:end].to(model.device)
            logits = model(input_ids=chunk[None], use_cache=False).logits[0, :-1].float()  # no KV cache of every layer
            nll = F.cross_entropy(logits, chunk[1:], reduction="none")  # nll[j] scores position begin + j + 1
            total_nll += nll[scored_until - begin - 1 :].sum().item()
            scored_until = end
    count = len(ids) - 1
    return {
        "perplexity": math.exp(total_nll / count),
        "nll_per_token": total_nll / count,
        "tokens": count,
        "window": window,
        "stride": stride,
    }


def file_perplexity(model, tokenizer, path: str | Path, window: int | None = None, stride: int | None = None) -> dict:
    """``perplexity`` of a UTF-8 text file, with the file's path and sha256 for the report."""
    from .task_data import file_sha256

    path = Path(path).expanduser()
    if not path.is_file():
        raise KiloError(f"perplexity file {path} not found; give a UTF-8 text file (e.g. <data>/corpus/enwiki_valid.txt)")
    result = perplexity(model, tokenizer, path.read_text(encoding="utf-8"), window, stride, progress=True)
    return {"file": str(path), "sha256": file_sha256(path), **result}
