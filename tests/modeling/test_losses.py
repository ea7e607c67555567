"""The training-step losses without full logits equal the plain cross-entropy over full logits."""

import pytest
import torch
import torch.nn.functional as F

from kilolayer.modeling import KiloConfig, KiloForCausalLM, KiloForMaskedLM
from kilolayer.modeling import losses
from kilolayer.modeling.losses import linear_cross_entropy


def leaves(rows=10, features=6, vocab=11, bias=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, features, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, features, generator=generator, dtype=torch.float64, requires_grad=True)
    bias_ = torch.randn(vocab, generator=generator, dtype=torch.float64, requires_grad=True) if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    targets[::3] = -100
    return hidden, weight, bias_, targets


def gradients(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 4, 1000])
def test_equals_cross_entropy_over_logits(monkeypatch, bias, chunk_rows):
    monkeypatch.setattr(losses, "CHUNK_BYTES", 8 * 11 * chunk_rows)  # float64 rows of 11 logits: several chunks, or one
    workspace = losses.LogitsWorkspace()
    for seed in (0, 1):  # the second call reuses the workspace's buffer
        hidden, weight, bias_, targets = leaves(bias=bias, seed=seed)
        expected = F.cross_entropy(F.linear(hidden, weight, bias_), targets, ignore_index=-100)
        scale = 0.25  # the loss of one micro-batch of four: the gradient is scaled by the incoming gradient
        expected_grads = gradients(expected * scale, (hidden, weight, bias_))
        for fused in (linear_cross_entropy(hidden, weight, bias_, targets), linear_cross_entropy(hidden, weight, bias_, targets, workspace=workspace)):
            torch.testing.assert_close(fused, expected)
            for got, want in zip(gradients(fused * scale, (hidden, weight, bias_)), expected_grads):
                torch.testing.assert_close(got, want)
    assert workspace.buffer is not None and workspace.buffer.dtype == torch.float64


def test_gradcheck():
    hidden, weight, bias_, targets = leaves(rows=5, features=3, vocab=4)
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy(h, w, b, targets), (hidden, weight, bias_))


def test_bf16_autocast_close_to_float32():
    hidden, weight, bias_, targets = (t.float().detach().requires_grad_() if t.is_floating_point() else t for t in leaves(rows=64, features=32, vocab=50))
    expected = F.cross_entropy(F.linear(hidden, weight, bias_), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(hidden, weight, bias_, targets)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, expected, rtol=2e-2, atol=2e-2)
    grad_hidden, grad_weight, _ = gradients(fused, (hidden, weight, bias_))
    assert grad_hidden.dtype == grad_weight.dtype == torch.float32
    want_hidden, want_weight, _ = gradients(expected, (hidden, weight, bias_))
    torch.testing.assert_close(grad_weight, want_weight, rtol=5e-2, atol=5e-3)


def tiny(arch, fused_loss=True):
    torch.manual_seed(0)
    config = KiloConfig(arch=arch, num_layers=3, hidden_size=16, num_heads=2, vocab_size=40, max_positions=16,
                        scheme="pre_ln" if arch == "gpt" else "post_ln", fused_loss=fused_loss)
    return (KiloForCausalLM if arch == "gpt" else KiloForMaskedLM)(config)


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_training_step_matches_the_full_logits_loss(arch):
    """Train mode + labels skips the logits; eval mode computes them. Same loss, same gradients (dropout is 0)."""
    model = tiny(arch)
    input_ids = torch.randint(0, 40, (3, 9))
    labels = input_ids if arch == "gpt" else torch.where(torch.rand(3, 9) < 0.3, input_ids, -100)
    labels[0, 0] = input_ids[0, 0]
    parameters = list(model.parameters())

    model.train()
    fused = model(input_ids=input_ids, labels=labels)
    assert fused.logits is None
    fused_grads = torch.autograd.grad(fused.loss, parameters, allow_unused=True)

    model.eval()
    plain = model(input_ids=input_ids, labels=labels)
    assert plain.logits is not None
    plain_grads = torch.autograd.grad(plain.loss, parameters, allow_unused=True)

    torch.testing.assert_close(fused.loss, plain.loss)
    for (name, _), got, want in zip(model.named_parameters(), fused_grads, plain_grads):
        if want is None:
            assert got is None, name
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_no_grad_training_forward_keeps_logits():
    model = tiny("gpt").train()
    input_ids = torch.randint(0, 40, (2, 5))
    with torch.no_grad():
        output = model(input_ids=input_ids, labels=input_ids)
    assert output.logits.shape == (2, 5, 40) and torch.isfinite(output.loss)


def test_target_probability_below_float32_range_gives_the_exact_loss():
    """−log p(target) with p underflowing to 0 would be inf: those rows take the exact log-sum-exp."""
    hidden, weight, bias_, targets = (t.float().detach().requires_grad_() if t.is_floating_point() else t for t in leaves(rows=6, vocab=7))
    with torch.no_grad():
        hidden.mul_(100)  # logit gaps of hundreds: p(target) = e^-hundreds for most rows
    expected = F.cross_entropy(F.linear(hidden, weight, bias_), targets)
    assert expected > 50
    fused = linear_cross_entropy(hidden, weight, bias_, targets)
    torch.testing.assert_close(fused, expected)
    for got, want in zip(gradients(fused, (hidden, weight, bias_)), gradients(expected, (hidden, weight, bias_))):
        torch.testing.assert_close(got, want)


def test_all_ignored_targets_give_zero_loss_and_zero_gradients():
    hidden, weight, bias_, targets = leaves()
    targets[:] = -100
    loss = linear_cross_entropy(hidden, weight, bias_, targets)
    assert loss == 0
    for gradient in gradients(loss, (hidden, weight, bias_)):
        assert torch.isfinite(gradient).all() and not gradient.any()


@pytest.mark.parametrize("fused_loss", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_a_micro_batch_without_targets_gives_zero_gradients(arch, fused_loss):
    model = tiny(arch, fused_loss).train()
    input_ids = torch.randint(0, 40, (2, 5))
    output = model(input_ids=input_ids, labels=torch.full_like(input_ids, -100))
    output.loss.backward()
    assert output.loss == 0
    for name, parameter in model.named_parameters():
        assert parameter.grad is None or (torch.isfinite(parameter.grad).all() and not parameter.grad.any()), name


def test_num_items_divides_the_summed_loss():
    hidden, weight, bias_, targets = leaves()
    summed = F.cross_entropy(F.linear(hidden, weight, bias_), targets, ignore_index=-100, reduction="sum")
    fused = linear_cross_entropy(hidden, weight, bias_, targets, num_items=17)
    torch.testing.assert_close(fused, summed / 17)
    for got, want in zip(gradients(fused, (hidden, weight, bias_)), gradients(summed / 17, (hidden, weight, bias_))):
        torch.testing.assert_close(got, want)


def test_fp16_autocast_gradient_keeps_the_one_over_n_scale_in_float32():
    """40,000 targets: 1/n = 2.5e-5 is below float16's smallest normal (6.1e-5), so a scale applied in
    float16 loses most of its digits. Applied in float32 after the matmul, the error is the matmul's own."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(40_000, 16, generator=generator, dtype=torch.float64)
    weight = torch.randn(64, 16, generator=generator, dtype=torch.float64) * 0.1
    targets = torch.randint(0, 64, (40_000,), generator=generator)
    targets[::4] = -100
    exact = hidden.clone().requires_grad_()
    F.cross_entropy(F.linear(exact, weight), targets).backward()
    mixed = hidden.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        linear_cross_entropy(mixed, weight.float(), None, targets).backward()
    relative_error = ((mixed.grad.double() - exact.grad).norm() / exact.grad.norm()).item()
    assert relative_error < 1e-3  # 5.3e-3 with the scale applied in float16 before the matmul


def test_switch_off_keeps_the_logits_in_training():
    model = tiny("gpt", fused_loss=False).train()
    input_ids = torch.randint(0, 40, (2, 5))
    output = model(input_ids=input_ids, labels=input_ids)
    assert output.logits.shape == (2, 5, 40) and output.logits.requires_grad
    fused = tiny("gpt", fused_loss=True).train()(input_ids=input_ids, labels=input_ids)
    torch.testing.assert_close(output.loss, fused.loss)


def training_and_eval_loss(model, input_ids):
    model.train()
    training = model(input_ids=input_ids, labels=input_ids).loss
    model.eval()
    return training, model(input_ids=input_ids, labels=input_ids).loss


def test_a_forward_hook_on_the_head_counts_in_training_as_in_eval():
    """The fused loss would read lm_head.weight and skip the hook: with a hook the head runs as a module."""
    model = tiny("gpt", fused_loss=True)
    input_ids = torch.randint(0, 40, (2, 6))
    plain_training, _ = training_and_eval_loss(model, input_ids)
    model.lm_head.register_forward_hook(lambda module, args, output: output * 3.0)
    training, evaluation = training_and_eval_loss(model, input_ids)
    torch.testing.assert_close(training, evaluation)
    assert (training - plain_training).abs() > 1e-3


def test_a_lora_adapter_on_the_head_changes_the_training_loss_as_the_eval_loss():
    peft = pytest.importorskip("peft")
    model = tiny("gpt", fused_loss=True)
    input_ids = torch.randint(0, 40, (2, 6))
    base_training, base_eval = training_and_eval_loss(model, input_ids)
    adapted = peft.get_peft_model(model, peft.LoraConfig(target_modules=["lm_head"], r=4, lora_alpha=16, init_lora_weights=False))
    training, evaluation = training_and_eval_loss(adapted, input_ids)
    torch.testing.assert_close(training, evaluation)
    assert (training - base_training).abs() > 1e-3 and (evaluation - base_eval).abs() > 1e-3
    training.backward()  # the adapter's weights get the gradient
    assert any(p.grad is not None and p.grad.any() for n, p in adapted.named_parameters() if "lora_" in n)
