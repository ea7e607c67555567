"""Under the Hugging Face Trainer, gradient accumulation over k micro-batches equals one batch k times larger.

The models take ``num_items_in_batch`` (the targets of all micro-batches of the optimizer step) and
divide their summed loss by it, and say so (``accepts_loss_kwargs``), so the Trainer does not also
divide by k. The labels ignore a different number of positions in each micro-batch: a per-micro-batch
mean would then differ from the big batch's mean, and a loss the Trainer neither divides nor
normalises would be k times too large.
"""

import pytest
import torch
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments

from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM

EXAMPLES, LENGTH, VOCAB = 8, 9, 40


class InOrderTrainer(Trainer):
    """No shuffling: both runs see the same examples in the same order."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


def examples(arch: str) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (EXAMPLES, LENGTH), generator=generator)
    if arch == "gpt":  # targets ignored at the end of each row, a different number in each
        labels = torch.where(torch.arange(LENGTH) < torch.arange(EXAMPLES)[:, None] % 5 + 3, ids, -100)
    else:  # masked positions at random: 1 to 6 per row
        labels = torch.where(torch.rand(EXAMPLES, LENGTH, generator=generator) < 0.35, ids, -100)
        labels[:, 0] = ids[:, 0]
    return [{"input_ids": i, "labels": l} for i, l in zip(ids, labels)]


def parameters_after_one_update(arch: str, fused_loss: bool, batch_size: int, accumulation: int, tmp_path):
    torch.manual_seed(0)
    config = KiloConfig(arch=arch, num_layers=2, hidden_size=16, num_heads=2, vocab_size=VOCAB, max_positions=16,
                        scheme="pre_ln" if arch == "gpt" else "post_ln", fused_loss=fused_loss)
    model = (KiloForCausalLM if arch == "gpt" else KiloForMaskedLM)(config)
    args = TrainingArguments(
        output_dir=str(tmp_path / f"{batch_size}x{accumulation}"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0,
        lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, report_to="none", use_cpu=True,
        save_strategy="no", logging_strategy="no", dataloader_num_workers=0,
    )
    trainer = InOrderTrainer(model=model, args=args, train_dataset=examples(arch))
    assert trainer.model_accepts_loss_kwargs
    trainer.train()
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("fused_loss", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_accumulation_of_four_equals_a_four_times_larger_batch(arch, fused_loss, tmp_path):
    accumulated = parameters_after_one_update(arch, fused_loss, batch_size=2, accumulation=4, tmp_path=tmp_path)
    one_batch = parameters_after_one_update(arch, fused_loss, batch_size=8, accumulation=1, tmp_path=tmp_path)
    torch.manual_seed(0)
    initial = dict((KiloForCausalLM if arch == "gpt" else KiloForMaskedLM)(KiloConfig(
        arch=arch, num_layers=2, hidden_size=16, num_heads=2, vocab_size=VOCAB, max_positions=16,
        scheme="pre_ln" if arch == "gpt" else "post_ln")).named_parameters())
    moved = max((one_batch[name] - initial[name]).abs().max().item() for name in one_batch)
    assert moved > 1e-3  # the update is not trivially zero
    for name, value in one_batch.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6, msg=name)
