"""The lesson 10 checks accept answers computed another way, and refuse plausible wrong ones.

The references inside ``minildm.checks.lesson10`` are compared here with independent
computations: the ``tokenizers`` library's own padding and truncation, numpy cosines, the
``clip_loss`` of transformers' CLIP, and a Python sort per query for top-k retrieval.
(Each listed Mistake being named as itself is pinned generically in test_lesson_checks.py.)
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

try:  # transformers 5.x
    from transformers.models.clip.modeling_clip import image_text_contrastive_loss as clip_loss
except ImportError:  # transformers 4.x
    from transformers.models.clip.modeling_clip import clip_loss

from minildm import text
from minildm.checks import CheckFailed
from minildm.checks import lesson10 as L10


def padded_by_tokenizers(token_ids, max_length):
    # ids as words of a WordLevel vocabulary; tokenizers adds [BOS] / [EOS], truncates and pads
    vocabulary = {"[PAD]": text.PAD_ID, "[UNK]": text.UNK_ID, "[BOS]": text.BOS_ID, "[EOS]": text.EOS_ID}
    vocabulary |= {str(i): i for i in range(4, 64)}
    tok = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", text.BOS_ID), ("[EOS]", text.EOS_ID)])
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=text.PAD_ID, pad_token="[PAD]")
    encodings = tok.encode_batch([" ".join(map(str, row[1:-1])) for row in token_ids])
    return (torch.tensor([e.ids for e in encodings]), torch.tensor([e.attention_mask for e in encodings]))


def numpy_cosine_logits(image_embeds, text_embeds, logit_scale):
    i, t = image_embeds.numpy(), text_embeds.numpy()
    cosines = (i @ t.T) / np.outer(np.linalg.norm(i, axis=1), np.linalg.norm(t, axis=1))
    return torch.from_numpy(np.exp(logit_scale.item()) * cosines).float()


def transformers_clip_loss(logits):
    # transformers takes logits_per_text, the transpose; the loss is symmetric in the two
    return clip_loss(logits.T)


def retrieval_by_sorting(similarity, k):
    n = len(similarity)
    rows, columns = similarity.tolist(), similarity.T.tolist()
    in_top_k = lambda scores, i: i in sorted(range(n), key=lambda j: -scores[j])[:k]  # noqa: E731
    return (sum(in_top_k(columns[j], j) for j in range(n)) / n,  # text -> image: each caption's images
            sum(in_top_k(rows[i], i) for i in range(n)) / n)  # image -> text: each image's captions


@pytest.mark.parametrize("check, independent", [
    (L10.pad_and_mask, padded_by_tokenizers),
    (L10.similarity_logits, numpy_cosine_logits),
    (L10.symmetric_contrastive_loss, transformers_clip_loss),
    (L10.topk_retrieval, retrieval_by_sorting),
], ids=["pad_and_mask", "similarity_logits", "symmetric_contrastive_loss", "topk_retrieval"])
def test_check_accepts_an_independent_computation(check, independent):
    check(independent)  # raises CheckFailed if the reference disagrees with the independent answer


def test_pad_and_mask_agrees_with_minildm_text_encode():
    # the check's convention is the package's: ids of text.encode, cut to words, padded back
    captions = ["a small red circle in the top left on white", "a large blue square in the center on black",
                "a small red circle in the top left and a large green triangle in the bottom right on black"]
    input_ids, attention_mask = text.encode(captions, max_length=14)
    rows = [[text.BOS_ID, *(text.VOCABULARY[w] for w in c.split()), text.EOS_ID] for c in captions]
    ours = L10._pad_with()(rows, 14)
    assert torch.equal(ours[0], input_ids) and torch.equal(ours[1], attention_mask)


def test_pad_and_mask_names_a_bool_mask_as_a_dtype_problem():
    def bool_mask(token_ids, max_length):
        input_ids, attention_mask = padded_by_tokenizers(token_ids, max_length)
        return input_ids, attention_mask.bool()
    with pytest.raises(CheckFailed, match="dtype"):
        L10.pad_and_mask(bool_mask)


def test_topk_retrieval_asks_for_numbers_not_tensors():
    def tensors(similarity, k):
        return tuple(torch.tensor(value) for value in retrieval_by_sorting(similarity, k))
    with pytest.raises(CheckFailed, match=r"use \.item\(\)"):
        L10.topk_retrieval(tensors)


def test_importing_the_checks_does_not_import_transformers():
    # every notebook imports minildm.checks; transformers costs seconds to import
    code = "import sys, minildm.checks, minildm.checks.lesson10; print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_not_implemented_passes_through():
    def todo(logits):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        L10.symmetric_contrastive_loss(todo)
