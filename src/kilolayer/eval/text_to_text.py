"""GLUE sentence pairs as text-to-text (T5's format), for encoder-decoder models.

The encoder reads ``"qqp question1: … question2: …"`` (T5's input format), the decoder learns to
write the label's word then EOS: QQP ``not_duplicate`` / ``duplicate``, MRPC ``not_equivalent`` /
``equivalent`` (T5's words). A prediction is rank classification: the label whose word (and EOS)
gets the higher total log-probability, so every prediction is a valid label. ``encode``,
``collate`` and ``predict`` stand in for the classification ones of ``finetune.py``, with the same
signatures; an example keeps its class in ``labels``, as there, and its words in ``target_ids``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VERBALIZERS = {"qqp": ("not_duplicate", "duplicate"), "mrpc": ("not_equivalent", "equivalent")}
IGNORE_INDEX = -100


def label_targets(tokenizer, task: str) -> list[list[int]]:
    """The token ids each label is written as, EOS included, by label index."""
    return [tokenizer(word, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for word in VERBALIZERS[task]]


def encode(tokenizer, task: str, rows: list[dict], max_length: int) -> list[dict]:
    """Per pair: ``input_ids`` (the T5-format text, truncated, then EOS), ``labels`` (the class),
    ``target_ids`` (its word and EOS) and ``candidates`` (every class's, for rank classification)."""
    from .finetune import TASK_FIELDS

    first, second = TASK_FIELDS[task]
    targets = label_targets(tokenizer, task)
    texts = [f"{task} {first}: {row[first]} {second}: {row[second]}" for row in rows]
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length - 1)["input_ids"]
    return [
        {"input_ids": ids + [tokenizer.eos_token_id], "labels": int(row["label"]), "target_ids": targets[int(row["label"])],
         "candidates": targets}
        for ids, row in zip(encoded, rows)
    ]


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def collate(tokenizer, examples: list[dict], device) -> dict:
    """Right-padded inputs with their attention mask; the decoder's labels are the target words, padded with -100."""
    input_ids = _pad([example["input_ids"] for example in examples], tokenizer.pad_token_id)
    attention_mask = _pad([[1] * len(example["input_ids"]) for example in examples], 0)
    labels = _pad([example["target_ids"] for example in examples], IGNORE_INDEX)
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "labels": labels.to(device)}


def predict(model, tokenizer, examples: list[dict], batch_size: int) -> list[int]:
    """The class of every example by rank classification: argmax over classes of Σ log p(class word, EOS | text)."""
    targets = examples[0]["candidates"]
    model.eval()
    predictions = []
    with torch.inference_mode():
        for begin in range(0, len(examples), batch_size):
            batch = collate(tokenizer, examples[begin : begin + batch_size], model.device)
            encoder_outputs = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            scores = []
            for target in targets:
                labels = torch.tensor([target] * len(batch["input_ids"]), device=model.device)
                logits = model(encoder_outputs=encoder_outputs, attention_mask=batch["attention_mask"], labels=labels,
                               use_cache=False).logits
                log_probs = -F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none").sum(-1)
                scores.append(log_probs)
            predictions += torch.stack(scores, dim=-1).argmax(-1).tolist()
    return predictions
