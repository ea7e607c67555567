"""The language-model loss without the (tokens x vocabulary) logits: a fused, chunked linear cross-entropy.

The usual path writes the logits (8 x 64 x 50257 floats = 103 MB at the benchmark's batch), then
log-softmax, the NLL gradient and the log-softmax gradient: four full-size buffers and as many
passes over memory. Here each chunk of rows is projected and turned into its softmax in place by
one fused kernel; that gives the loss (−log p of the target) and, minus the one-hot, the gradient
(softmax − one-hot) / n_targets, which goes back through the projection at once. The matmuls are
the same three as before; one chunk's logits are the only vocabulary-sized buffer. The gradients
are computed in forward, so this is for training steps only (``torch.is_grad_enabled()``);
evaluation keeps the logits.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 256 * 2**20  # float32 logits per chunk: 1,335 rows at GPT-2's 50,257-word vocabulary
UNDERFLOW_NLL = 80.0  # −log p above this: p is near float32's smallest normal (e^−87), recompute exactly


def _project(inputs, projection, bias, out=None):
    if bias is None:
        return torch.mm(inputs, projection.T, out=out)
    return torch.addmm(bias, inputs, projection.T, out=out)


class LogitsWorkspace:
    """One chunk's logits buffer, kept from step to step by the model that owns it.

    A fresh 100 MB tensor is a fresh ``mmap`` on CPU, page-faulted again on every step: on the
    benchmark machine the projection wrote into a new buffer in 100 ms and into a reused one in 61 ms.
    """

    def __init__(self):
        self.buffer: torch.Tensor | None = None

    def take(self, rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buffer = self.buffer
        if buffer is None or buffer.dtype != dtype or buffer.device != device or buffer.shape[1] != columns or buffer.shape[0] < rows:
            self.buffer = buffer = torch.empty(rows, columns, dtype=dtype, device=device)
        return buffer[:rows]


class LinearCrossEntropy(torch.autograd.Function):
    """Σ over targets ≠ ignore_index of −log softmax(hidden · Wᵀ + b)[target], divided by ``divisor``.

    ``divisor`` is the number of targets in this batch, or the HF Trainer's ``num_items_in_batch``
    (every target of the optimizer step); with no target at all the loss and gradients are 0.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index: int, workspace: LogitsWorkspace | None, num_items):
        device = hidden.device.type
        autocast = torch.is_autocast_enabled(device)
        compute_dtype = torch.get_autocast_dtype(device) if autocast else hidden.dtype
        loss_dtype = torch.promote_types(compute_dtype, torch.float32)  # softmax in float32 at least
        with torch.autocast(device, enabled=False):
            inputs, projection = hidden.to(compute_dtype), weight.to(compute_dtype)
            bias_ = bias.to(compute_dtype) if bias is not None else None
            valid = targets != ignore_index
            divisor = valid.sum() if num_items is None else torch.as_tensor(num_items, device=hidden.device)
            inverse = 1.0 / divisor.to(loss_dtype).clamp_min(1)  # the 1/n scale, applied in float32 after each matmul
            safe_targets = targets.masked_fill(~valid, 0)[:, None]
            rows = max(1, CHUNK_BYTES // (4 * weight.shape[0]))
            total = torch.zeros((), dtype=loss_dtype, device=hidden.device)
            grad_hidden = torch.empty(inputs.shape, dtype=loss_dtype, device=hidden.device)
            grad_weight = grad_bias = None
            for start in range(0, inputs.shape[0], rows):
                chunk = slice(start, start + rows)
                chunk_inputs, chunk_targets, chunk_valid = inputs[chunk], safe_targets[chunk], valid[chunk, None]
                if workspace is not None and compute_dtype == loss_dtype:
                    buffer = workspace.take(min(rows, inputs.shape[0]), weight.shape[0], loss_dtype, hidden.device)
                    logits = _project(chunk_inputs, projection, bias_, out=buffer[: chunk_inputs.shape[0]])
                else:
                    logits = _project(chunk_inputs, projection, bias_).to(loss_dtype)
                target_logits = logits.gather(1, chunk_targets)[:, 0]
                probs = torch.softmax(logits, dim=-1, out=logits)  # one fused kernel, in the logits' memory
                nll = -probs.gather(1, chunk_targets)[:, 0].log()
                underflow = nll > UNDERFLOW_NLL  # p(target) too small for −log p: the exact log-sum-exp instead
                if underflow.any():
                    exact = torch.logsumexp(_project(chunk_inputs[underflow], projection, bias_).to(loss_dtype), dim=-1)
                    nll[underflow] = exact - target_logits[underflow]
                total += (nll * chunk_valid[:, 0]).sum()
                probs.scatter_add_(1, chunk_targets, -chunk_valid.to(loss_dtype))  # softmax − one-hot
                probs.mul_(chunk_valid)  # ignored rows: no gradient (an exact 0/1 mask, before any rounding)
                grad_logits = probs.to(compute_dtype)
                grad_hidden[chunk] = (grad_logits @ projection).to(loss_dtype).mul_(inverse)
                chunk_weight = (grad_logits.T @ chunk_inputs).to(loss_dtype).mul_(inverse)
                grad_weight = chunk_weight if grad_weight is None else grad_weight.add_(chunk_weight)
                if bias is not None:
                    chunk_bias = probs.sum(0).mul_(inverse)
                    grad_bias = chunk_bias if grad_bias is None else grad_bias.add_(chunk_bias)
        ctx.gradients = (grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return total * inverse

    @staticmethod
    def backward(ctx, grad_loss):
        """The forward's gradients times the incoming one (1 / accumulation steps, say); the graph may be retained."""
        gradients = (g.mul(grad_loss).to(dtype) if g is not None else None for g, dtype in zip(ctx.gradients, ctx.dtypes))
        return (*gradients, None, None, None, None)


def linear_cross_entropy(hidden, weight, bias, targets, ignore_index: int = -100, workspace: LogitsWorkspace | None = None,
                         num_items: torch.Tensor | int | None = None) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, targets, ignore_index, reduction="sum") / n`` for a training step,
    without the logits; n = ``num_items`` (the HF Trainer's ``num_items_in_batch``) or the count of targets.

    ``hidden`` is (rows, features), ``targets`` (rows,); a ``workspace`` reuses the logits buffer.
    Equal to the unfused loss and gradients to float32 rounding (``tests/modeling/test_losses.py``).
    """
    return LinearCrossEntropy.apply(hidden, weight, bias, targets, ignore_index, workspace, num_items)
