"""Checks for lesson 10 (text encoders): padding and the attention mask, CLIP's logits, its loss, retrieval.

A caption becomes ``[BOS] words [EOS]``, padded on the right with [PAD] = 0 to a fixed length
L, with an attention mask that is 1 on the real tokens and 0 on the padding; a caption too long
keeps its first L - 1 tokens and then its [EOS], where the text is pooled. CLIP (Radford et al.
2021, Figure 3) scores image i against caption j by the cosine similarity of their embeddings
times a learned scale exp(t), and trains with the symmetric cross-entropy: the mean of the
image -> caption cross-entropy over each row of the (N, N) logits and the caption -> image one
over each column, the right answer of row i (and of column i) being i. Top-k retrieval counts
the images whose own caption is among their k most similar captions (image -> text), and the
captions whose own image is among their k most similar images (text -> image).

The references are written here in plain torch, so that importing ``minildm.checks`` does not
import transformers. Inputs are drawn so that each slip moves the answer past the tolerance:
rows both longer and shorter than L, embeddings of different norms, logits that are not
symmetric (so rows and columns differ), N != M, and k > 1 with a similarity that ranks some
right answers first and some not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .core import Mistake, compare

__all__ = ["pad_and_mask", "similarity_logits", "symmetric_contrastive_loss", "topk_retrieval"]

_BOS, _EOS, _PAD = 2, 3, 0  # the ids of minildm.text (PAD_ID, BOS_ID, EOS_ID)


# ---------------------------------------------------------------------------- pad_and_mask

def _token_row(generator: torch.Generator, length: int) -> list[int]:
    words = torch.randint(4, 40, (length - 2,), generator=generator).tolist()
    return [_BOS, *words, _EOS]


def _padding_case(generator: torch.Generator) -> dict:
    max_length = int(torch.randint(6, 11, (), generator=generator))
    lengths = [int(torch.randint(max_length + 1, max_length + 5, (), generator=generator)),  # truncated
               int(torch.randint(3, max_length, (), generator=generator))]  # padded
    lengths += torch.randint(3, max_length + 4, (int(torch.randint(1, 4, (), generator=generator)),),
                             generator=generator).tolist()
    return {"token_ids": [_token_row(generator, n) for n in lengths], "max_length": max_length}


def _pad_with(truncate="keep_eos", side="right", mask="tokens"):
    """The reference, or one of the mistakes below with one part changed."""
    def pad_and_mask(token_ids, max_length):
        input_ids = torch.full((len(token_ids), max_length), _PAD, dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros(len(token_ids), max_length, dtype=torch.long)  # (B, L)
        for i, row in enumerate(token_ids):
            if len(row) > max_length:
                # too long: the first L - 1 tokens, then [EOS]; or (a mistake) just the first L
                row = row[:max_length - 1] + row[-1:] if truncate == "keep_eos" else row[:max_length]
            where = slice(0, len(row)) if side == "right" else slice(max_length - len(row), max_length)
            input_ids[i, where] = torch.tensor(row)
            attention_mask[i, where] = 1
        if mask == "ones":
            return input_ids, torch.ones_like(attention_mask)
        if mask == "inverted":
            return input_ids, 1 - attention_mask
        return input_ids, attention_mask
    return pad_and_mask


def pad_and_mask(learner) -> None:
    """Check ``learner(token_ids, max_length)``: B lists ``[BOS, ..., EOS]`` -> (input_ids, mask), (B, L) int64."""
    __tracebackhide__ = True
    compare(learner, _pad_with(), _padding_case, name="pad_and_mask", mistakes=[
        Mistake("a long caption cut at max_length, so its [EOS] is lost", _pad_with(truncate="cut"),
                "the text is pooled at [EOS]: a row too long keeps its first max_length - 1 tokens and then its "
                "last token, row[:max_length - 1] + row[-1:]."),
        Mistake("padding on the left instead of the right", _pad_with(side="left"),
                "the tokens start at position 0 ([BOS] first) and [PAD] = 0 fills the positions after them."),
        Mistake("an attention mask of ones everywhere (padding not masked)", _pad_with(mask="ones"),
                "the mask is 1 on the real tokens ([BOS], the words, [EOS]) and 0 on every [PAD]."),
        Mistake("the attention mask inverted (1 on the padding, 0 on the tokens)", _pad_with(mask="inverted"),
                "1 means 'attend to this token': the real tokens get 1, the padding 0."),
    ], hint="ids = torch.zeros(B, max_length, dtype=torch.long) and mask alike; for each row, if it is too long "
            "take row[:max_length - 1] + row[-1:]; write it at the start of its line and set the mask to 1 there")


# ---------------------------------------------------------------------------- similarity_logits

def _embeddings(generator: torch.Generator, n: int, d: int) -> torch.Tensor:
    norms = 0.5 + 2.5 * torch.rand(n, 1, generator=generator)  # (n, 1): so that normalising matters
    return F.normalize(torch.randn(n, d, generator=generator), dim=-1) * norms  # (n, d)


def _logits_case(generator: torch.Generator) -> dict:
    n = int(torch.randint(3, 7, (), generator=generator))
    m = n + int(torch.randint(1, 4, (), generator=generator))  # M != N: a transposed result shows
    d = int(torch.randint(3, 9, (), generator=generator))
    return {"image_embeds": _embeddings(generator, n, d), "text_embeds": _embeddings(generator, m, d),
            "logit_scale": 1.0 + 2.5 * torch.rand((), generator=generator)}


def _logits_with(normalise_dim=-1, scale=torch.exp):
    def similarity_logits(image_embeds, text_embeds, logit_scale):
        if normalise_dim is not None:
            image_embeds = F.normalize(image_embeds, dim=normalise_dim)  # (N, D)
            text_embeds = F.normalize(text_embeds, dim=normalise_dim)  # (M, D)
        # logits_ij = exp(t) cos(image_i, text_j)
        return scale(logit_scale) * image_embeds @ text_embeds.T  # (N, M)
    return similarity_logits


def similarity_logits(learner) -> None:
    """Check ``learner(image_embeds, text_embeds, logit_scale)``: (N, D), (M, D), t -> exp(t) cos, (N, M)."""
    __tracebackhide__ = True
    compare(learner, _logits_with(), _logits_case, name="similarity_logits", mistakes=[
        Mistake("embeddings not normalised (dot products, not cosines)", _logits_with(normalise_dim=None),
                "divide each embedding by its length first: F.normalize(x, dim=-1), so that every entry "
                "is a cosine in [-1, 1] before the scale."),
        Mistake("each feature normalised over the batch (dim=0) instead of each vector",
                _logits_with(normalise_dim=0),
                "normalise each row (one embedding) to length 1: F.normalize(x, dim=-1)."),
        Mistake("logit_scale used as the scale itself, without exp", _logits_with(scale=lambda t: t),
                "CLIP learns the scale in log space: multiply the cosines by exp(logit_scale) (1 / 0.07 at "
                "the start, log(1 / 0.07) = 2.66 stored)."),
        Mistake("divided by exp(logit_scale) instead of multiplied", _logits_with(scale=lambda t: torch.exp(-t)),
                "exp(logit_scale) = 1 / temperature: a low temperature makes the logits larger, so multiply."),
    ], hint="i = F.normalize(image_embeds, dim=-1); t = F.normalize(text_embeds, dim=-1); "
            "return logit_scale.exp() * i @ t.T")


# ---------------------------------------------------------------------------- symmetric_contrastive_loss

def _loss_case(generator: torch.Generator) -> dict:
    n = int(torch.randint(3, 9, (), generator=generator))
    # a diagonal that stands out a little, off-diagonal entries that are not symmetric
    return {"logits": 3 * torch.randn(n, n, generator=generator) + 2 * torch.eye(n)}


def _contrastive_with(directions=("rows", "columns"), combine=torch.mean, reduction="mean"):
    def symmetric_contrastive_loss(logits):
        labels = torch.arange(len(logits))  # (N,): image i goes with caption i
        terms = {"rows": F.cross_entropy(logits, labels, reduction=reduction),  # image -> caption
                 "columns": F.cross_entropy(logits.T, labels, reduction=reduction)}  # caption -> image
        return combine(torch.stack([terms[d] for d in directions]))
    return symmetric_contrastive_loss


def symmetric_contrastive_loss(learner) -> None:
    """Check ``learner(logits)``: (N, N) logits_per_image -> 0-dim tensor, the mean of the two cross-entropies."""
    __tracebackhide__ = True
    compare(learner, _contrastive_with(), _loss_case, name="symmetric_contrastive_loss", mistakes=[
        Mistake("image -> caption only (cross-entropy over the rows)", _contrastive_with(directions=("rows",)),
                "CLIP's loss is symmetric: also score each caption against every image, the columns "
                "(cross_entropy(logits.T, labels)), and average the two."),
        Mistake("caption -> image only (cross-entropy over the columns)", _contrastive_with(directions=("columns",)),
                "add the image -> caption term, cross_entropy(logits, labels) over the rows, and average the two."),
        Mistake("the two directions added instead of averaged", _contrastive_with(combine=torch.sum),
                "loss = (loss_images + loss_captions) / 2, as in Radford et al.'s Figure 3."),
        Mistake("the cross-entropies summed over the batch instead of averaged", _contrastive_with(reduction="sum"),
                "each direction is the *mean* cross-entropy over the N rows (F.cross_entropy's default "
                "reduction), so the loss does not grow with the batch."),
    ], hint="labels = torch.arange(len(logits)); return (F.cross_entropy(logits, labels) + "
            "F.cross_entropy(logits.T, labels)) / 2")


# ---------------------------------------------------------------------------- topk_retrieval

def _retrieval_case(generator: torch.Generator) -> dict:
    n = int(torch.randint(6, 13, (), generator=generator))
    # right answers are a little more similar than the rest: some ranked first, some not
    similarity = torch.randn(n, n, generator=generator) + 1.2 * torch.eye(n)  # (N, N)
    return {"similarity": similarity, "k": int(torch.randint(2, 5, (), generator=generator))}


def _retrieval_with(largest=True, k_of=lambda k: k, swap=False, as_count=False):
    def topk_retrieval(similarity, k):
        n = len(similarity)
        right = torch.arange(n)  # image i goes with caption i
        best_captions = similarity.topk(k_of(k), dim=1, largest=largest).indices  # (N, k) per image
        best_images = similarity.topk(k_of(k), dim=0, largest=largest).indices  # (k, N) per caption
        hits = [(best_images == right[None, :]).any(dim=0).sum().item(),  # text -> image
                (best_captions == right[:, None]).any(dim=1).sum().item()]  # image -> text
        scores = tuple(hit if as_count else hit / n for hit in hits)
        return scores[::-1] if swap else scores
    return topk_retrieval


def topk_retrieval(learner) -> None:
    """Check ``learner(similarity, k)``: (N images, N captions) -> (text_to_image, image_to_text) top-k accuracies."""
    __tracebackhide__ = True
    compare(learner, _retrieval_with(), _retrieval_case, name="topk_retrieval", mistakes=[
        Mistake("the two directions swapped", _retrieval_with(swap=True),
                "image -> text ranks the captions of each image: a row of the matrix (images are rows); "
                "text -> image ranks the images of each caption: a column."),
        Mistake("the k least similar instead of the k most similar", _retrieval_with(largest=False),
                "retrieval keeps the highest similarities: similarity.topk(k, dim=...) (largest=True)."),
        Mistake("top-1 whatever k is", _retrieval_with(k_of=lambda k: 1),
                "a query is right if its answer is anywhere among its k best candidates, not only the first."),
        Mistake("a count of right answers instead of a fraction", _retrieval_with(as_count=True),
                "divide the number of right answers by N, the number of queries, for an accuracy in [0, 1]."),
    ], hint="best = similarity.topk(k, dim=1).indices (N, k); image_to_text = (best == torch.arange(N)[:, None])"
            ".any(dim=1).float().mean().item(); the same with dim=0 for text_to_image; return (text_to_image, "
            "image_to_text)")
