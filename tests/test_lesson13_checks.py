"""The lesson 13 checks accept answers computed another way, and refuse plausible wrong ones.

The references inside ``minildm.checks.lesson13`` are compared here with independent
computations: the package's ``LoRALinear`` (forward, and ``merge`` into its base layer) given the
case's W, b, A, B and alpha, numpy, and ``lora.inject`` on a model of the case's layers with its
trainable parameters counted by ``lora.count_parameters``. (Each listed Mistake being named as
itself is pinned generically in test_lesson_checks.py.)
"""

import numpy as np
import pytest
import torch
from torch import nn

from minildm import lora
from minildm.checks import CheckFailed
from minildm.checks import lesson13 as L13


def lora_layer(W, A, B, alpha, b=None):
    """minildm's LoRALinear around nn.Linear(W, b), with the case's A and B copied in."""
    out_features, in_features = W.shape
    base = nn.Linear(in_features, out_features, bias=b is not None)
    layer = lora.LoRALinear(base, r=A.shape[0], alpha=alpha)
    with torch.no_grad():
        base.weight.copy_(W)
        if b is not None:
            base.bias.copy_(b)
        layer.lora_A.weight.copy_(A)
        layer.lora_B.weight.copy_(B)
    return layer


def forward_by_package(x, W, b, A, B, alpha):
    with torch.no_grad():
        return lora_layer(W, A, B, alpha, b)(x)


def forward_numpy(x, W, b, A, B, alpha):
    x, W, b, A, B = (t.double().numpy() for t in (x, W, b, A, B))
    h = np.einsum("oi,bi->bo", W, x) + b + alpha / A.shape[0] * np.einsum("or,ri,bi->bo", B, A, x)
    return torch.from_numpy(h).float()


def merge_by_package(W, A, B, alpha):
    layer = lora_layer(W, A, B, alpha)
    layer.merge()
    return layer.base_layer.weight.detach().clone()


def count_by_injection(shapes, r):
    model = nn.ModuleDict({f"layer{i}": nn.Linear(d_in, d_out) for i, (d_out, d_in) in enumerate(shapes)})
    lora.inject(model, targets=tuple(model.keys()), r=r, alpha=r)
    trainable, _ = lora.count_parameters(model)
    return trainable


@pytest.mark.parametrize("check, independent", [
    (L13.lora_forward, forward_by_package),
    (L13.lora_forward, forward_numpy),
    (L13.merge_weight, merge_by_package),
    (L13.lora_parameter_count, count_by_injection),
], ids=["lora_forward_package", "lora_forward_numpy", "merge_weight", "lora_parameter_count"])
def test_check_accepts_an_independent_computation(check, independent):
    check(independent)  # raises CheckFailed if the reference disagrees with the independent answer


def test_merging_by_the_check_gives_the_adapters_outputs():
    # the check's merged W', used as a plain linear, reproduces its own forward with the adapter
    generator = torch.Generator().manual_seed(3)
    case = L13._forward_case(generator)
    merged = L13._merged_with()(case["W"], case["A"], case["B"], case["alpha"])
    plain = case["x"] @ merged.T + case["b"]
    assert torch.allclose(plain, L13._forward_with()(**case), atol=1e-5)


def test_a_count_given_as_a_tensor_is_told_to_be_a_number():
    with pytest.raises(CheckFailed, match="expected a number"):
        L13.lora_parameter_count(lambda shapes, r: torch.tensor(sum(r * (i + o) for o, i in shapes)))


def test_a_forward_that_drops_the_batch_axis_is_told_its_shape():
    with pytest.raises(CheckFailed, match="shape"):
        L13.lora_forward(lambda x, W, b, A, B, alpha: (forward_by_package(x, W, b, A, B, alpha)).sum(0))


def test_the_student_placeholder_passes_through():
    def unfinished(W, A, B, alpha):
        raise NotImplementedError()
    with pytest.raises(NotImplementedError):
        L13.merge_weight(unfinished)
