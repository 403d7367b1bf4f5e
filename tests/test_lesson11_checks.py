"""The lesson 11 checks accept answers computed another way, and refuse plausible wrong ones.

The references inside ``minildm.checks.lesson11`` are compared here with independent
computations: heads cut out of the features by index, attention written as explicit loops
over heads with exp / sum, GELU from the normal CDF (erf), and a word's token found by the
real tokenizer (``minildm.text.encode``) with the heads averaged in a loop.
(Each listed Mistake being named as itself is pinned generically in test_lesson_checks.py.)
"""

import math

import pytest
import torch

from minildm import text
from minildm.checks import CheckFailed
from minildm.checks import lesson11 as L11


def heads_by_slicing(h, heads):
    # head i is the block of d consecutive features i d ... (i + 1) d - 1 of every token
    d = h.shape[-1] // heads
    return torch.stack([h[:, :, i * d:(i + 1) * d] for i in range(heads)], dim=1)  # (B, heads, N, d)


def cross_attention_by_loops(x, context, w_q, w_k, w_v, w_o, b_o, heads):
    d = w_q.shape[0] // heads
    out = torch.zeros(x.shape[0], x.shape[1], w_q.shape[0])  # (B, N, heads d)
    for b in range(x.shape[0]):
        q, k, v = x[b] @ w_q.T, context[b] @ w_k.T, context[b] @ w_v.T  # (N, hd), (L, hd), (L, hd)
        for i in range(heads):
            cols = slice(i * d, (i + 1) * d)
            scores = (q[:, cols] @ k[:, cols].T / math.sqrt(d)).exp()  # (N, L)
            out[b, :, cols] = scores / scores.sum(1, keepdim=True) @ v[:, cols]
    return out @ w_o.T + b_o  # (B, N, C)


def geglu_from_erf(x, weight, bias):
    dim_out = weight.shape[0] // 2
    value = x @ weight[:dim_out].T + bias[:dim_out]
    gate = x @ weight[dim_out:].T + bias[dim_out:]
    # GELU(g) = g Phi(g), Phi the standard normal CDF
    return value * gate * 0.5 * (1 + torch.erf(gate / math.sqrt(2)))


def word_map_from_tokenizer(maps, prompt, word, height):
    ids, _ = text.encode(prompt)  # (1, CONTEXT_LENGTH): [BOS] words [EOS] [PAD] ...
    [position] = (ids[0] == text.VOCABULARY[word]).nonzero()[0].tolist()
    B, heads, HW, _ = maps.shape
    total = sum(maps[:, i, :, position] for i in range(heads))  # (B, HW)
    return (total / heads).reshape(B, height, HW // height)


@pytest.mark.parametrize("check, independent", [
    (L11.split_heads, heads_by_slicing),
    (L11.cross_attention, cross_attention_by_loops),
    (L11.geglu, geglu_from_erf),
    (L11.word_map, word_map_from_tokenizer),
], ids=["split_heads", "cross_attention", "geglu", "word_map"])
def test_check_accepts_an_independent_computation(check, independent):
    check(independent)  # raises CheckFailed if the reference disagrees with the independent answer


def test_cross_attention_check_matches_diffusers_attention_with_the_same_weights():
    attention_processor = pytest.importorskip("diffusers.models.attention_processor")

    def diffusers_cross_attention(x, context, w_q, w_k, w_v, w_o, b_o, heads):
        attn = attention_processor.Attention(x.shape[-1], cross_attention_dim=context.shape[-1], heads=heads,
                                             dim_head=w_q.shape[0] // heads)
        attn.load_state_dict({"to_q.weight": w_q, "to_k.weight": w_k, "to_v.weight": w_v,
                              "to_out.0.weight": w_o, "to_out.0.bias": b_o})
        with torch.no_grad():
            return attn(x, encoder_hidden_states=context)

    L11.cross_attention(diffusers_cross_attention)


def test_split_heads_without_transpose_on_tokens_gives_a_shape_hint():
    # (B, N, heads, d) with the transpose forgotten: the values are right, the axes are not
    with pytest.raises(CheckFailed, match="axes are in another order"):
        L11.split_heads(lambda h, heads: h.reshape(h.shape[0], h.shape[1], heads, -1))


def test_cross_attention_without_output_projection_is_refused_by_its_shape():
    def no_projection(x, context, w_q, w_k, w_v, w_o, b_o, heads):
        return cross_attention_by_loops(x, context, w_q, w_k, w_v, torch.eye(w_q.shape[0]), 0, heads)

    with pytest.raises(CheckFailed, match="expected shape"):
        L11.cross_attention(no_projection)


def test_word_map_refuses_a_transposed_layout():
    def transposed(maps, prompt, word, height):
        position = prompt.split().index(word) + 1
        B, _, HW, _ = maps.shape
        return maps[..., position].mean(1).reshape(B, HW // height, height)  # (B, W, H): rows and columns swapped

    with pytest.raises(CheckFailed, match="expected shape"):
        L11.word_map(transposed)


@pytest.mark.parametrize("check", [L11.split_heads, L11.cross_attention, L11.geglu, L11.word_map],
                         ids=["split_heads", "cross_attention", "geglu", "word_map"])
def test_not_implemented_passes_through(check):
    def todo(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        check(todo)
