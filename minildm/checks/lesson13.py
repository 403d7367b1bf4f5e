"""Checks for lesson 13 (LoRA): the adapted layer's forward, merging, the parameters an injection trains.

LoRA (Hu et al. 2021, eq. 3) keeps a pretrained weight W (out, in) frozen and adds a low-rank
change scaled by alpha / r:

    h = W x + b + (alpha / r) B A x,        A: (r, in),  B: (out, r),

so merging is W' = W + (alpha / r) B A (and unmerging subtracts the same matrix), and wrapping a
layer of shape (out, in) trains r (in + out) numbers instead of in * out (+ out for a bias).
The scale is alpha / r, not alpha: peft's ``scaling`` and ``minildm.lora.LoRALinear``'s.

Inputs are drawn so that each slip moves the answer past the tolerance: ranks from 2 to 5 and
alphas that are neither 1 nor r (so alpha, alpha / r, r / alpha and 1 all differ), non-zero B
(a trained adapter, so the low-rank term matters), non-zero biases, and rectangular layers
(in != out), so that in * out, r * in and r * out are all different counts.
"""

from __future__ import annotations

import torch

from .core import Mistake, compare

__all__ = ["lora_forward", "merge_weight", "lora_parameter_count"]


def _adapter_case(generator: torch.Generator, with_input: bool) -> dict:
    r = int(torch.randint(2, 6, (), generator=generator))
    d_in = int(torch.randint(6, 13, (), generator=generator))
    d_out = d_in + int(torch.randint(1, 5, (), generator=generator))  # rectangular: out != in
    alpha = float(r * (1.5 + 2 * torch.rand((), generator=generator)))  # alpha / r in [1.5, 3.5]: never 1
    case = {"W": torch.randn(d_out, d_in, generator=generator) / d_in ** 0.5,  # (out, in)
            "A": torch.randn(r, d_in, generator=generator) / d_in ** 0.5,  # (r, in)
            "B": torch.randn(d_out, r, generator=generator),  # (out, r): trained, not zero
            "alpha": alpha}
    if with_input:
        B = int(torch.randint(2, 5, (), generator=generator))
        case = {"x": torch.randn(B, d_in, generator=generator), **case,  # (batch, in)
                "b": torch.randn(d_out, generator=generator)}  # (out,)
    return case


# ---------------------------------------------------------------------------- lora_forward

def _forward_case(generator: torch.Generator) -> dict:
    return _adapter_case(generator, with_input=True)


def _forward_with(scaling=lambda alpha, r: alpha / r, bias=True):
    def forward(x, W, b, A, B, alpha):
        r = A.shape[0]
        # h = x W^T + b + (alpha / r) x A^T B^T
        h = x @ W.T + (b if bias else 0)  # (batch, out)
        return h + scaling(alpha, r) * (x @ A.T) @ B.T
    return forward


def lora_forward(learner) -> None:
    """Check ``learner(x, W, b, A, B, alpha)``: x (batch, in) -> W x + b + (alpha / r) B A x, (batch, out)."""
    __tracebackhide__ = True
    compare(learner, _forward_with(), _forward_case, name="lora_forward", mistakes=[
        Mistake("the low-rank term scaled by alpha instead of alpha / r", _forward_with(scaling=lambda a, r: a),
                "the scale is alpha / r (r = A.shape[0]): with r = 4 and alpha = 8 it is 2, not 8."),
        Mistake("the low-rank term scaled by r / alpha", _forward_with(scaling=lambda a, r: r / a),
                "alpha is on top: scaling = alpha / r."),
        Mistake("the low-rank term not scaled at all", _forward_with(scaling=lambda a, r: 1.0),
                "multiply B A x by alpha / r."),
        Mistake("the bias b left out", _forward_with(bias=False),
                "the frozen layer is the whole nn.Linear, W x + b; LoRA only adds to it."),
    ], hint="r = A.shape[0]; return x @ W.T + b + (alpha / r) * (x @ A.T) @ B.T")


# ---------------------------------------------------------------------------- merge_weight

def _merge_case(generator: torch.Generator) -> dict:
    return _adapter_case(generator, with_input=False)


def _merged_with(scaling=lambda alpha, r: alpha / r, sign=1.0):
    def merged(W, A, B, alpha):
        # W' = W + (alpha / r) B A: (out, in) + (out, r) @ (r, in)
        return W + sign * scaling(alpha, A.shape[0]) * B @ A
    return merged


def merge_weight(learner) -> None:
    """Check ``learner(W, A, B, alpha)``: W (out, in), A (r, in), B (out, r) -> W + (alpha / r) B A, (out, in)."""
    __tracebackhide__ = True
    compare(learner, _merged_with(), _merge_case, name="merge_weight", mistakes=[
        Mistake("delta W scaled by alpha instead of alpha / r", _merged_with(scaling=lambda a, r: a),
                "merging must give the same outputs as the adapter, whose scale is alpha / r."),
        Mistake("delta W not scaled at all", _merged_with(scaling=lambda a, r: 1.0),
                "delta W = (alpha / r) B A, the same scale the forward pass uses."),
        Mistake("delta W subtracted (that is unmerging)", _merged_with(sign=-1.0),
                "merge adds: W' = W + (alpha / r) B A; unmerge subtracts it again."),
    ], hint="return W + (alpha / A.shape[0]) * B @ A")


# ---------------------------------------------------------------------------- lora_parameter_count

def _count_case(generator: torch.Generator) -> dict:
    n = int(torch.randint(1, 5, (), generator=generator))
    shapes = []
    for _ in range(n):
        d_in = int(torch.randint(8, 129, (), generator=generator))
        shapes.append((d_in + int(torch.randint(1, 33, (), generator=generator)), d_in))  # (out, in), out != in
    return {"shapes": shapes, "r": int(torch.randint(2, 17, (), generator=generator))}


def _count_with(per_layer):
    def count(shapes, r):
        return int(sum(per_layer(out, d_in, r) for out, d_in in shapes))
    return count


def lora_parameter_count(learner) -> None:
    """Check ``learner(shapes, r)``: a list of (out, in) weight shapes, one per wrapped nn.Linear, and the
    rank r -> the number of numbers LoRA trains, sum of r (in + out), as an int."""
    __tracebackhide__ = True
    compare(learner, _count_with(lambda out, d_in, r: r * (d_in + out)), _count_case, name="lora_parameter_count",
            mistakes=[
                Mistake("the full matrices counted (in * out per layer)", _count_with(lambda out, d_in, r: out * d_in),
                        "LoRA trains A (r, in) and B (out, r), not W: r * in + out * r numbers per layer."),
                Mistake("r * in * out per layer", _count_with(lambda out, d_in, r: r * out * d_in),
                        "A has r * in entries and B has out * r: add them, do not multiply in and out."),
                Mistake("only A counted (r * in per layer)", _count_with(lambda out, d_in, r: r * d_in),
                        "B (out, r) is trained too: r * (in + out)."),
                Mistake("the bias counted as trainable (r (in + out) + out)",
                        _count_with(lambda out, d_in, r: r * (d_in + out) + out),
                        "the base layer, bias included, is frozen: only A and B train."),
            ], hint="return sum(r * (d_in + d_out) for d_out, d_in in shapes)")
