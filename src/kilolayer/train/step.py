"""One training step's gradients, with no loop state: ``grad_accum`` micro-batches forward and backward,
loss = mean over micro-batches of each one's mean loss, then gradient clipping.

The caller decides what to do with the result (the stability guard's verdict, the optimizer update,
logging); this module only reads batches and the model and leaves gradients in ``.grad``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import distributed
from .diagnostics import LayerDiagnostics


@dataclass
class Gradients:
    loss: float  # mean over micro-batches and ranks
    grad_norm: float  # global norm before clipping
    tokens: int  # input tokens of the step on all ranks, padding excluded
    layer_grads: torch.Tensor | None  # per-block gradient norms before clipping (diagnostic steps only)
    activations: torch.Tensor | None  # per-block residual-stream RMS of the first micro-batch (diagnostic steps only)


def activation_rms(output, is_encoder_decoder: bool) -> torch.Tensor:
    """Per-block RMS of the residual stream; an encoder-decoder's blocks are the encoder's, then the decoder's."""
    if not is_encoder_decoder:
        return LayerDiagnostics.activation_rms(output.hidden_states)
    stacks = (output.encoder_hidden_states, output.decoder_hidden_states)
    return torch.cat([LayerDiagnostics.activation_rms(hidden_states) for hidden_states in stacks])


def compute_gradients(
    wrapped: torch.nn.Module,
    next_batch: Callable[[], dict[str, torch.Tensor]],
    *,
    grad_accum: int,
    parallel: distributed.Parallel,
    autocast,
    parameters: list[torch.nn.Parameter],
    grad_clip: float | None,
    diagnostics: LayerDiagnostics | None,
    is_encoder_decoder: bool,
    before_clip: Callable[[], None] = lambda: None,
) -> Gradients:
    """Forward/backward ``grad_accum`` micro-batches from ``next_batch()`` (gradients all-reduced on the last one
    only), then per-block norms when ``diagnostics`` is given, ``before_clip()`` (fault injection in tests) and
    clipping to ``grad_clip``."""
    loss_sum = torch.zeros((), device=parallel.device)
    tokens = torch.zeros((), device=parallel.device)
    activations = None
    diagnose = diagnostics is not None
    for micro in range(grad_accum):
        batch = next_batch()
        tokens += batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
        with parallel.gradient_sync(wrapped, sync=micro == grad_accum - 1):
            with autocast():
                output = wrapped(**batch, output_hidden_states=diagnose and micro == 0)
            if diagnose and micro == 0:
                activations = activation_rms(output, is_encoder_decoder)
            loss = output.loss / grad_accum
            loss.backward()
        loss_sum += loss.detach()
        del output, loss
    before_clip()
    layer_grads = diagnostics.grad_norms() if diagnose else None
    if grad_clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    summed = parallel.all_reduce_sum(torch.stack([loss_sum.float(), tokens.float()]))
    loss_value, token_count, grad_value = torch.stack([summed[0] / parallel.world_size, summed[1], distributed.full_tensor(grad_norm).float()]).tolist()
    return Gradients(loss_value, grad_value, round(token_count), layer_grads, activations)
