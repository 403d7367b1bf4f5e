"""The lesson 14 checks accept answers computed another way, and refuse plausible wrong ones.

The references inside ``minildm.checks.lesson14`` are compared here with independent
computations: autograd through a real zero-initialised ``nn.Conv2d``, the residuals scaled by
``controlnet.scale_residuals`` and added, guess-mode weights read off ``scale_residuals`` applied
to residuals of ones, and IoU counted with numpy. (Each listed Mistake being named as itself is
pinned generically in test_lesson_checks.py.)
"""

import numpy as np
import pytest
import torch

from minildm import controlnet
from minildm.checks import CheckFailed
from minildm.checks import lesson14 as L14


def gradients_by_autograd(x, grad_y):
    conv = controlnet.zero_conv(x.shape[1], grad_y.shape[1])
    x = x.clone().requires_grad_(True)
    conv(x).backward(grad_y)
    return conv.weight.grad[:, :, 0, 0], conv.bias.grad, x.grad


def add_by_scale_residuals(skips, residuals, mid, mid_residual, scale):
    down, m = controlnet.scale_residuals((residuals, mid_residual), scale)
    return [s + r for s, r in zip(skips, down)], mid + m


def weights_by_scale_residuals(n, scale):
    ones = [torch.ones(1) for _ in range(n - 1)]
    down, mid = controlnet.scale_residuals((ones, torch.ones(1)), scale, guess_mode=True)
    return torch.cat([*down, mid])


def iou_numpy(a, b):
    out = []
    for x, y in zip(a.numpy(), b.numpy()):
        union = np.logical_or(x, y).sum()
        out.append(np.logical_and(x, y).sum() / union if union else 1.0)
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("check, independent", [
    (L14.zero_conv_gradients, gradients_by_autograd),
    (L14.add_control, add_by_scale_residuals),
    (L14.guess_mode_weights, weights_by_scale_residuals),
    (L14.mask_iou, iou_numpy),
], ids=["zero_conv_gradients", "add_control", "guess_mode_weights", "mask_iou"])
def test_check_accepts_an_independent_computation(check, independent):
    check(independent)  # raises CheckFailed if the reference disagrees with the independent answer


def test_the_zero_conv_check_pins_a_zero_input_gradient_and_a_non_zero_weight_gradient():
    # the lecture's point, read off the reference on one of its own cases
    case = L14._gradients_case(torch.Generator().manual_seed(0))
    dW, db, dx = L14._gradients_with(L14._weight_grad)(**case)
    assert dW.abs().min() > 0 and db.abs().min() > 0 and torch.equal(dx, torch.zeros_like(case["x"]))


def test_a_transposed_weight_gradient_is_refused_for_its_shape():
    def transposed(x, grad_y):
        dW, db, dx = gradients_by_autograd(x, grad_y)
        return dW.T, db, dx
    with pytest.raises(CheckFailed, match="shape"):
        L14.zero_conv_gradients(transposed)


def test_an_iou_in_float64_is_refused_for_its_dtype():
    with pytest.raises(CheckFailed, match="dtype"):
        L14.mask_iou(lambda a, b: iou_numpy(a, b).double())
