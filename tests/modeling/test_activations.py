"""GPT-2's tanh-GELU through the sigmoid form is the same function as HF's ``gelu_new``, with the same gradient."""

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

from kilolayer.modeling.layers import SigmoidTanhGelu, TanhGelu, build_activation


def test_equals_hf_gelu_new_and_its_gradient():
    x = (torch.randn(4, 64, dtype=torch.float64) * 4).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    y, expected = TanhGelu()(x), ACT2FN["gelu_new"](reference)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, reference.grad, rtol=0, atol=1e-12)


def test_float32_close_to_the_native_kernel():
    x = torch.randn(1000) * 6
    torch.testing.assert_close(TanhGelu()(x), F.gelu(x, approximate="tanh"), rtol=1e-6, atol=1e-6)


def test_gradcheck():
    x = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SigmoidTanhGelu.apply, (x,))


def test_bf16_uses_the_native_kernel():
    x = torch.randn(64).bfloat16()
    assert torch.equal(TanhGelu()(x), F.gelu(x, approximate="tanh"))


def test_both_tanh_gelu_names_map_to_it_and_others_to_act2fn():
    assert isinstance(build_activation("gelu_new"), TanhGelu)
    assert isinstance(build_activation("gelu_pytorch_tanh"), TanhGelu)
    assert type(build_activation("gelu")) is type(ACT2FN["gelu"])
