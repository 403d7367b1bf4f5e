"""Checks for lesson 11 (cross-attention): splitting heads, cross-attention, GEGLU, a word's attention map.

Multi-head attention (Vaswani et al. 2017, section 3.2.2) gives each of h heads its own d
consecutive features of the (B, N, h d) projections: (B, N, h d) -> (B, h, N, d). In
cross-attention (Rombach et al. 2022, eq. 3) the queries come from the image tokens x and the
keys and values from the text tokens c: head_i = softmax(Q_i K_i^T / sqrt(d)) V_i with
Q = x W_q^T, K = c W_k^T, V = c W_v^T, and out = [head_1 | ... | head_h] W_o^T + b_o.
GEGLU (Shazeer 2020) splits x W^T + b into a value half and a gate half and returns
value * GELU(gate), the exact GELU x Phi(x), as diffusers' ``GEGLU``. A word's attention map
(Hertz et al. 2022, Prompt-to-Prompt) is the column of the (B, heads, H W, L) cross-attention
weights at that word's token, averaged over the heads and laid out as the H x W image; the
token sequence is ``[BOS] words [EOS] [PAD] ...``, so word k of the prompt is token k + 1.

Inputs are drawn so that each slip moves the answer past the tolerance: N != heads and d > 1
(so a reshape without the transpose is not the same thing), attention logits of order a few
units (so the scale and the softmax axis matter), inner width h d != the query width, H != W,
and maps that differ from head to head and from token to token.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import data
from ..nn import Attention as _PackageAttention
from ..nn import GEGLU as _PackageGEGLU
from .core import Mistake, compare

__all__ = ["split_heads", "cross_attention", "geglu", "word_map"]


# ---------------------------------------------------------------------------- split_heads

def _split_case(generator: torch.Generator) -> dict:
    heads = int(torch.randint(2, 5, (), generator=generator))
    N = int(torch.randint(3, 8, (), generator=generator))
    if N == heads:
        N += 1  # (B, N, heads, d) and (B, heads, N, d) must have different shapes
    B, d = int(torch.randint(1, 4, (), generator=generator)), int(torch.randint(2, 6, (), generator=generator))
    return {"h": torch.randn(B, N, heads * d, generator=generator), "heads": heads}


def _split_heads(h, heads):
    B, N, width = h.shape
    # (B, N, heads d) -> (B, N, heads, d) -> (B, heads, N, d): head i owns features i d ... (i + 1) d - 1
    return h.reshape(B, N, heads, width // heads).transpose(1, 2)


def _split_without_transpose(h, heads):
    B, N, width = h.shape
    return h.reshape(B, heads, N, width // heads)


def _split_round_robin(h, heads):
    B, N, width = h.shape
    return h.reshape(B, N, width // heads, heads).permute(0, 3, 1, 2)  # head i gets features i, i + heads, ...


def split_heads(learner) -> None:
    """Check ``learner(h, heads)``: (B, N, heads * d) -> (B, heads, N, d), head i the i-th block of d features."""
    __tracebackhide__ = True
    compare(learner, _split_heads, _split_case, name="split_heads", mistakes=[
        Mistake("reshaped straight to (B, heads, N, d), without the transpose", _split_without_transpose,
                "a reshape keeps the memory order, so (B, heads, N, d) would cut the sequence of tokens, not the "
                "features, into heads. Reshape to (B, N, heads, d) first (the features of each token split into "
                "heads), then .transpose(1, 2)."),
        Mistake("features dealt to the heads round-robin (head i gets features i, i + heads, ...)",
                _split_round_robin,
                "each head owns d consecutive features: reshape the last axis as (heads, d), not (d, heads)."),
    ], hint="B, N, width = h.shape; return h.reshape(B, N, heads, width // heads).transpose(1, 2)")


# ---------------------------------------------------------------------------- cross_attention

def _cross_case(generator: torch.Generator) -> dict:
    B, heads = int(torch.randint(1, 3, (), generator=generator)), int(torch.randint(2, 4, (), generator=generator))
    N, L = int(torch.randint(4, 10, (), generator=generator)), int(torch.randint(3, 7, (), generator=generator))
    C, D = 8, 6  # image features and text features of different widths
    d = int(torch.randint(2, 6, (), generator=generator))
    if heads * d == C:
        d += 1  # an inner width unlike C, so W_o really changes the width

    def weight(rows, cols):  # entries of order 1.5 / sqrt(fan_in): logits of a few units
        return 1.5 * torch.randn(rows, cols, generator=generator) / math.sqrt(cols)

    return {"x": torch.randn(B, N, C, generator=generator), "context": torch.randn(B, L, D, generator=generator),
            "w_q": weight(heads * d, C), "w_k": weight(heads * d, D), "w_v": weight(heads * d, D),
            "w_o": weight(C, heads * d), "b_o": torch.randn(C, generator=generator), "heads": heads}


@torch.no_grad()
def _cross_attention(x, context, w_q, w_k, w_v, w_o, b_o, heads):
    """minildm.nn.Attention with these weights."""
    attn = _PackageAttention(x.shape[-1], context.shape[-1], heads, w_q.shape[0] // heads)
    attn.load_state_dict({"to_q.weight": w_q, "to_k.weight": w_k, "to_v.weight": w_v,
                          "to_out.0.weight": w_o, "to_out.0.bias": b_o})
    return attn(x, context)  # (B, N, C)


def _cross_attention_with(scale="head", softmax_dim=-1, split=True, bias=True):
    """Cross-attention with one part changed, for the mistakes below."""
    def attend(x, context, w_q, w_k, w_v, w_o, b_o, heads):
        n_heads = heads if split else 1
        q, k, v = (_split_heads(t, n_heads) for t in (x @ w_q.T, context @ w_k.T, context @ w_v.T))  # (B, h, ., d)
        d = q.shape[-1] if scale == "head" else w_q.shape[0]
        # A = softmax(Q K^T / sqrt(d))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=softmax_dim)  # (B, h, N, L)
        out = (weights @ v).transpose(1, 2).flatten(2)  # (B, N, h d)
        return out @ w_o.T + (b_o if bias else 0)  # (B, N, C)
    return attend


def cross_attention(learner) -> None:
    """Check ``learner(x, context, w_q, w_k, w_v, w_o, b_o, heads)``: multi-head cross-attention, (B, N, C)."""
    __tracebackhide__ = True
    compare(learner, _cross_attention, _cross_case, name="cross_attention", mistakes=[
        Mistake("scores divided by sqrt(heads * d), the whole width, instead of sqrt(d) of one head",
                _cross_attention_with(scale="inner"),
                "each head computes its own dot products over d = w_q.shape[0] // heads features, so its scale is "
                "1 / sqrt(d)."),
        Mistake("one big head: the features were never split into heads", _cross_attention_with(split=False),
                "split Q, K and V into `heads` groups of d features ((B, heads, N, d)) and run the softmax in each "
                "head separately; merge the heads back before W_o."),
        Mistake("softmax over the image positions (dim=-2) instead of over the text tokens",
                _cross_attention_with(softmax_dim=-2),
                "each image position (query) distributes its attention over the L text tokens: "
                "torch.softmax(scores, dim=-1), so every row of weights sums to 1."),
        Mistake("the output bias b_o left out", _cross_attention_with(bias=False),
                "the output projection is a full linear layer: out = merged_heads @ w_o.T + b_o."),
    ], hint="q = x @ w_q.T; k = context @ w_k.T; v = context @ w_v.T; split each into (B, heads, ., d); "
            "softmax(q @ k.transpose(-2, -1) / sqrt(d), dim=-1) @ v; merge to (B, N, heads * d); @ w_o.T + b_o")


# ---------------------------------------------------------------------------- geglu

def _geglu_case(generator: torch.Generator) -> dict:
    dim_in, dim_out = int(torch.randint(3, 9, (), generator=generator)), int(torch.randint(2, 7, (), generator=generator))
    shape = (int(torch.randint(1, 4, (), generator=generator)), int(torch.randint(2, 6, (), generator=generator)))
    return {"x": torch.randn(*shape, dim_in, generator=generator),
            "weight": torch.randn(2 * dim_out, dim_in, generator=generator) / math.sqrt(dim_in),
            "bias": 0.5 * torch.randn(2 * dim_out, generator=generator)}


@torch.no_grad()
def _geglu(x, weight, bias):
    """minildm.nn.GEGLU with these weights."""
    layer = _PackageGEGLU(weight.shape[1], weight.shape[0] // 2)
    layer.load_state_dict({"proj.weight": weight, "proj.bias": bias})
    return layer(x)  # (..., dim_out)


def _gated_with(gate_fn=F.gelu, swap=False):
    def gated(x, weight, bias):
        value, gate = (x @ weight.T + bias).chunk(2, dim=-1)  # (..., dim_out) each
        if swap:
            value, gate = gate, value
        return value * gate_fn(gate)
    return gated


def geglu(learner) -> None:
    """Check ``learner(x, weight, bias)``: [h | g] = x W^T + b, return h * GELU(g), (..., dim_out)."""
    __tracebackhide__ = True
    compare(learner, _geglu, _geglu_case, name="geglu", mistakes=[
        Mistake("value and gate halves swapped (GELU of the first half)", _gated_with(swap=True),
                "the first half of x W^T + b is the value, the second half the gate: h, g = ....chunk(2, dim=-1); "
                "return h * F.gelu(g) (diffusers' order, so its weights load unchanged)."),
        Mistake("ReLU instead of GELU (that is ReGLU)", _gated_with(gate_fn=F.relu),
                "GEGLU gates with GELU(g) = g Phi(g), smooth and slightly negative below 0: F.gelu."),
        Mistake("a sigmoid gate (that is the original GLU)", _gated_with(gate_fn=torch.sigmoid),
                "GLU (Dauphin et al. 2017) uses sigmoid(g); the GE in GEGLU is GELU: F.gelu(g)."),
        Mistake("GELU's tanh approximation instead of the exact GELU",
                _gated_with(gate_fn=lambda g: F.gelu(g, approximate="tanh")),
                "close (within about 1e-3) but not equal: the block, like diffusers' GEGLU, uses the exact "
                "GELU, g * Phi(g) = F.gelu(g)."),
    ], hint="h, g = (x @ weight.T + bias).chunk(2, dim=-1); return h * F.gelu(g)")


# ---------------------------------------------------------------------------- word_map

def _prompt(generator: torch.Generator) -> str:
    def pick(options):
        options = list(options)
        return options[int(torch.randint(len(options), (), generator=generator))]
    return (f"a {pick(data.SIZES)} {pick(data.COLOURS)} {pick(data.SHAPES)} in the {pick(data.POSITIONS)} "
            f"on {pick(data.BACKGROUNDS)}")


def _word_map_case(generator: torch.Generator) -> dict:
    prompt = _prompt(generator)
    words = prompt.split()
    B, heads = int(torch.randint(1, 3, (), generator=generator)), int(torch.randint(2, 5, (), generator=generator))
    H, W = (2, 3) if torch.rand((), generator=generator) < 0.5 else (4, 2)
    L = len(words) + 2 + int(torch.randint(0, 6, (), generator=generator))  # [BOS] words [EOS] and some [PAD]
    maps = torch.softmax(2 * torch.randn(B, heads, H * W, L, generator=generator), dim=-1)  # rows sum to 1
    return {"maps": maps, "prompt": prompt, "word": words[int(torch.randint(1, len(words), (), generator=generator))],
            "height": H}


def _word_map_with(offset=1, heads="mean", scale=False):
    """The reference (offset 1: [BOS] comes first), or one of the mistakes below."""
    def word_map(maps, prompt, word, height):
        position = prompt.split().index(word) + offset  # the word's token: after [BOS]
        B, _, HW, _ = maps.shape
        column = maps[..., position]  # (B, heads, HW)
        per_head = {"mean": column.mean(1), "sum": column.sum(1), "first": column[:, 0]}[heads]  # (B, HW)
        out = per_head.reshape(B, height, HW // height)  # (B, H, W)
        return out / out.amax(dim=(1, 2), keepdim=True) if scale else out
    return word_map


def word_map(learner) -> None:
    """Check ``learner(maps, prompt, word, height)``: maps (B, heads, H W, L) -> (B, H, W), the word's token column."""
    __tracebackhide__ = True
    compare(learner, _word_map_with(), _word_map_case, name="word_map", mistakes=[
        Mistake("the word's index in the prompt used as its token position ([BOS] forgotten)",
                _word_map_with(offset=0),
                "the token sequence starts with [BOS], so word k of the prompt is token k + 1: "
                "prompt.split().index(word) + 1."),
        Mistake("heads summed instead of averaged", _word_map_with(heads="sum"),
                "average over the heads (dim 1) with .mean(1): the map then stays a fraction of each pixel's "
                "attention, between 0 and 1."),
        Mistake("head 0 only, not the average over the heads", _word_map_with(heads="first"),
                "each head attends in its own way; the per-word map of Prompt-to-Prompt averages them: .mean(1)."),
        Mistake("each map scaled to a maximum of 1", _word_map_with(scale=True),
                "return the attention weights themselves (a fraction of each pixel's attention), not rescaled; "
                "scale only when you draw them."),
    ], hint="position = prompt.split().index(word) + 1; column = maps[..., position].mean(1)  # (B, H W); "
            "return column.reshape(B, height, -1)")
