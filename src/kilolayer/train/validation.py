"""Pretraining's validation: the token-weighted mean loss on a fixed validation set, and its context gain.

context_gain = loss with every input's context shuffled across the batch − loss with its own context
(``diagnostics.context_shuffled``): a model that ignores its input gains 0 however low its loss.
"""

from __future__ import annotations

import math

import torch

from .diagnostics import context_shuffled


@torch.no_grad()
def language_model_validation(trainer, valid_batches, model_config) -> dict:
    """Over the first ``eval_batches`` validation batches, rounded up to a multiple of the world size (so every
    FSDP rank runs as many forwards): loss, perplexity and context gain, summed over ranks."""
    parallel = trainer.parallel
    world, rank = parallel.world_size, parallel.rank
    batches = math.ceil(trainer.config.eval_batches / world) * world
    totals = torch.zeros(3, dtype=torch.float64, device=parallel.device)
    rolls_every_input = model_config.arch != "bert"  # a GPT's or an encoder's input is all context
    for index in range(rank, batches, world):
        batch = trainer.batch_on_device(valid_batches, index)
        with trainer.autocast():
            loss = trainer.wrapped(**batch, use_cache=False).loss  # scoring: no KV cache of every layer
            shuffled_loss = trainer.wrapped(**context_shuffled(batch, rolls_every_input), use_cache=False).loss
        labels = batch["labels"][:, 1:] if model_config.is_causal else batch["labels"]
        count = (labels != -100).sum()
        totals += torch.stack([loss.double() * count, shuffled_loss.double() * count, count.double()])
    loss_sum, shuffled_sum, count = parallel.all_reduce_sum(totals).tolist()
    loss = loss_sum / count
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "context_gain": shuffled_sum / count - loss, "batches": batches}
