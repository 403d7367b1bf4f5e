"""Text encoders: a word-level tokenizer for the shapes captions and a mini-CLIP.

A text-to-image model never reads words. It reads vectors, one per token, from a text
encoder trained so that a caption and the image it describes land close together.
Stable Diffusion uses a frozen CLIP (Radford et al. 2021) and cross-attends to its last
hidden states; we do the same at a size that trains on a laptop:

* ``tokenizer`` / ``encode`` -- a ``tokenizers`` WordLevel tokenizer whose vocabulary is every
  word the shapes caption grammar can produce (``data.parse_caption``), plus [PAD], [UNK],
  [BOS] and [EOS]. Captions become ``[BOS] words [EOS] [PAD] ...`` of a fixed length.
* ``MiniCLIP`` -- transformers' ``CLIPTextModel`` and ``CLIPVisionModel`` with small configs,
  linear projections to a shared space and a learned temperature. ``encode_text`` gives one
  normalised vector per caption (the state at [EOS]), ``text_features`` the per-token states
  an LDM cross-attends to, ``encode_image`` one normalised vector per image.
* ``contrastive_loss`` -- CLIP's symmetric cross-entropy over the batch's similarity matrix,
  with identical captions counted as matches (shapes captions repeat within a batch).
* ``retrieval_accuracy`` -- text -> image and image -> text top-k, duplicates counted right.
* ``train_shapes_clip`` -- the ``shapes-clip`` recipe: contrastive training on shapes images
  and their captions with ``train.fit``.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

from minildm import data, train

# ----------------------------------------------------------------------------------------
# the tokenizer
# ----------------------------------------------------------------------------------------

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
# Token ids. transformers' CLIPTextModel pools the text at one position, chosen by its config's
# eos_token_id (CLIPTextModel.forward, transformers 5.x):
#   * eos_token_id == 2 (a legacy branch kept for old OpenAI configs): the position of the
#     HIGHEST token id in each row -- right for OpenAI's vocabulary, where EOS is the last id,
#     but here it would pool at whichever word happens to have the largest id;
#   * any other eos_token_id: the FIRST position where input_ids == eos_token_id.
# We rely on the second branch: EOS is id 3 (never 2), and every row ``encode`` makes holds
# exactly one EOS, right after the last word (truncation keeps it), so the pooled vector is the
# state at EOS. The text model is causal, so that state has seen every word and no padding.
SPECIAL_IDS = {PAD: 0, UNK: 1, BOS: 2, EOS: 3}
PAD_ID, UNK_ID, BOS_ID, EOS_ID = (SPECIAL_IDS[t] for t in (PAD, UNK, BOS, EOS))


def _caption_words() -> list[str]:
    """Every word the caption grammar can produce, in the grammar's order, each once."""
    grammar = [["a"], data.SIZES, data.COLOURS, data.ALL_SHAPES, ["in", "the"],
               [w for position in data.POSITIONS for w in position.split()], ["and", "on"], data.BACKGROUNDS]
    return list(dict.fromkeys(itertools.chain.from_iterable(grammar)))


WORDS = tuple(_caption_words())
# word -> id: the special tokens first, then the caption words
VOCABULARY = {**SPECIAL_IDS, **{w: i for i, w in enumerate(WORDS, start=len(SPECIAL_IDS))}}
# the longest caption the grammar makes, plus [BOS] and [EOS]: two objects of
# "a {size} {colour} {shape} in the {position}" (6 words + a position of up to 2), joined by
# "and", then "on {background}": 2 * 8 + 1 + 2 = 19 words, 21 tokens
_WORDS_PER_OBJECT = len("a {size} {colour} {shape} in the".split()) + max(len(p.split()) for p in data.POSITIONS)
CONTEXT_LENGTH = 2 * _WORDS_PER_OBJECT + len("and on {background}".split()) + 2


def _check_max_length(max_length) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
        raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (room for [BOS] and [EOS]), got {max_length}")
    return int(max_length)


@functools.lru_cache(maxsize=None)
def tokenizer(max_length: int = CONTEXT_LENGTH) -> Tokenizer:
    """A WordLevel tokenizer for shapes captions: lower-cased, split on whitespace (punctuation
    becomes its own token), unknown words -> [UNK], wrapped as ``[BOS] words [EOS]``, then padded
    with [PAD] (id 0) or truncated to exactly ``max_length`` tokens.

    Truncation drops words from the end but keeps [EOS] as the last token (tokenizers counts the
    tokens the template adds before it truncates), so a too-long caption is read as its first
    ``max_length - 2`` words. The tokenizer is built once per ``max_length`` and shared (``encode``
    uses it): do not change its settings in place.
    """
    max_length = _check_max_length(max_length)
    tok = Tokenizer(models.WordLevel(VOCABULARY, unk_token=UNK))
    tok.add_special_tokens([PAD, UNK, BOS, EOS])  # already in the vocabulary: ids unchanged
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A {EOS}",
                                                       special_tokens=[(BOS, BOS_ID), (EOS, EOS_ID)])
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=PAD_ID, pad_token=PAD)
    return tok


def _check_captions(captions) -> list[str]:
    if isinstance(captions, str):
        return [captions]
    if not isinstance(captions, Sequence) or not captions:
        raise TypeError(f"captions must be a string or a non-empty list of strings, got {type(captions).__name__}")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{i}] must be a string, got {type(caption).__name__}")
    return list(captions)


def encode(captions: str | Sequence[str], max_length: int = CONTEXT_LENGTH) -> tuple[Tensor, Tensor]:
    """Captions -> (input_ids (B, L) int64, attention_mask (B, L) int64), L = ``max_length``.

    Each row is ``[BOS] words [EOS] [PAD] ...``; the mask is 1 on [BOS], the words and [EOS],
    0 on padding. A single string is a batch of one.
    """
    encodings = tokenizer(max_length).encode_batch(_check_captions(captions))
    input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, L)
    attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)  # (B, L)
    return input_ids, attention_mask


def decode(input_ids: Tensor) -> list[str]:
    """(B, L) token ids -> B strings, special tokens dropped (unknown words stay as "[UNK]")."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids must be an integer tensor (B, L), got {got}")
    tok = tokenizer()
    return [" ".join(tok.id_to_token(i) for i in row if i not in (PAD_ID, BOS_ID, EOS_ID))
            for row in input_ids.tolist()]


# ----------------------------------------------------------------------------------------
# mini-CLIP
# ----------------------------------------------------------------------------------------

class MiniCLIP(nn.Module):
    """CLIP (Radford et al. 2021) at toy size: a causal text transformer and a ViT, each
    projected to a shared ``embed_dim``-d space where matching (image, caption) pairs have a
    high cosine similarity.

    max_length      token positions of the text model (``encode(..., max_length)``)
    embed_dim       the shared space's dimension
    text_width, text_layers, text_heads        the text transformer (hidden size, depth, heads)
    image_size, patch_size                     the ViT reads (image_size / patch_size)^2 patches + [CLS]
    vision_width, vision_layers, vision_heads  the ViT
    mlp_ratio       feed-forward width / hidden size in both transformers

    Every argument is a plain number, so ``pretrained`` stores them in the checkpoint and
    rebuilds the model. The vocabulary is ``VOCABULARY`` (pad 0, bos 2, eos 3; see SPECIAL_IDS).
    Images are (B, 3, image_size, image_size) in [-1, 1], as everywhere in minildm, and go into
    the ViT as they are: no renormalisation with OpenAI's ImageNet mean and std, which only
    matter for their pretrained weights; ours are trained on [-1, 1] from the start.
    """

    def __init__(self, max_length: int = CONTEXT_LENGTH, embed_dim: int = 64, text_width: int = 64,
                 text_layers: int = 2, text_heads: int = 4, image_size: int = 32, patch_size: int = 4,
                 vision_width: int = 64, vision_layers: int = 2, vision_heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        sizes = {"max_length": max_length, "embed_dim": embed_dim, "text_width": text_width,
                 "text_layers": text_layers, "text_heads": text_heads, "image_size": image_size,
                 "patch_size": patch_size, "vision_width": vision_width, "vision_layers": vision_layers,
                 "vision_heads": vision_heads, "mlp_ratio": mlp_ratio}
        for name, value in sizes.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        _check_max_length(max_length)
        for width, heads, which in ((text_width, text_heads, "text"), (vision_width, vision_heads, "vision")):
            if width % heads:
                raise ValueError(f"{which}_width ({width}) must be divisible by {which}_heads ({heads})")
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be divisible by patch_size ({patch_size})")
        self.max_length, self.image_size = int(max_length), int(image_size)
        text_config = CLIPTextConfig(
            vocab_size=len(VOCABULARY), hidden_size=text_width, intermediate_size=mlp_ratio * text_width,
            num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=max_length,
            pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
        vision_config = CLIPVisionConfig(
            hidden_size=vision_width, intermediate_size=mlp_ratio * vision_width, num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads, num_channels=3, image_size=image_size, patch_size=patch_size)
        self.text_model = CLIPTextModel(text_config)
        self.vision_model = CLIPVisionModel(vision_config)
        # CLIP's projections have no bias
        self.text_projection = nn.Linear(text_width, embed_dim, bias=False)
        self.visual_projection = nn.Linear(vision_width, embed_dim, bias=False)
        # the temperature, learned in log space: exp(logit_scale) starts at 1 / 0.07 (Radford et al. 2021)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # ---- text

    def _check_tokens(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            got = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor (B, L) from text.encode, got {got}")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"input_ids has {input_ids.shape[1]} positions; this model reads at most "
                             f"max_length={self.max_length}")
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ValueError(f"attention_mask must be a tensor shaped like input_ids {tuple(input_ids.shape)}, got {got}")
        if not (input_ids == EOS_ID).any(dim=1).all():
            raise ValueError(f"every row of input_ids needs an [EOS] token (id {EOS_ID}), where the text is "
                             "pooled; text.encode adds one")

    def _text_states(self, input_ids: Tensor, attention_mask: Tensor):
        self._check_tokens(input_ids, attention_mask)
        return self.text_model(input_ids=input_ids, attention_mask=attention_mask)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) tokens -> (B, L, text_width): the final-layer-normed last hidden states, one per
        token -- what an LDM cross-attends to, as Stable Diffusion uses frozen CLIP's last hidden
        state. Padding positions get states too (they see the caption through the causal
        attention); pass ``attention_mask`` on to ignore them."""
        return self._text_states(input_ids, attention_mask).last_hidden_state

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) tokens -> (B, embed_dim) unit vectors: the state at [EOS], projected, normalised."""
        pooled = self._text_states(input_ids, attention_mask).pooler_output  # (B, text_width), at EOS
        return F.normalize(self.text_projection(pooled), dim=-1)  # (B, D)

    # ---- images

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, embed_dim) unit vectors: the ViT's [CLS] state, projected, normalised."""
        expected = (3, self.image_size, self.image_size)
        if not isinstance(images, Tensor) or not images.is_floating_point() or tuple(images.shape[1:]) != expected:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, {', '.join(map(str, expected))}) in [-1, 1], got {got}")
        pooled = self.vision_model(pixel_values=images).pooler_output  # (B, vision_width), [CLS] after post-LN
        return F.normalize(self.visual_projection(pooled), dim=-1)  # (B, D)

    # ---- both

    def temperature_scale(self) -> Tensor:
        """exp(logit_scale), clamped at 100 as in CLIP ("clipped to prevent scaling the logits by more than 100")."""
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """logits_per_image (B, B): entry (i, j) = scale * cos(image i, caption j)."""
        image_embeds = self.encode_image(images)  # (B, D)
        text_embeds = self.encode_text(input_ids, attention_mask)  # (B, D)
        return self.temperature_scale() * image_embeds @ text_embeds.T  # (B, B)


# ----------------------------------------------------------------------------------------
# the contrastive loss and retrieval
# ----------------------------------------------------------------------------------------

def same_caption(input_ids: Tensor) -> Tensor:
    """(B, L) token ids -> (B, B) bool: True where rows i and j are the same caption."""
    return (input_ids[:, None, :] == input_ids[None, :, :]).all(dim=-1)


def contrastive_loss(logits: Tensor, positives: Tensor | None = None) -> Tensor:
    """CLIP's symmetric cross-entropy over a batch's similarity matrix.

    Radford et al. (2021), Figure 3, numpy-like pseudo-code:
        I_e = l2_normalize(image_encoder(I) @ W_i)        # (n, d)
        T_e = l2_normalize(text_encoder(T) @ W_t)         # (n, d)
        logits = I_e @ T_e.T * exp(t)                     # (n, n)
        labels = arange(n)
        loss_i = cross_entropy(logits, labels, axis=0)
        loss_t = cross_entropy(logits, labels, axis=1)
        loss = (loss_i + loss_t) / 2

    logits     (N, N) logits_per_image: row i scores image i against every caption
    positives  optional (N, N) bool, True where image i and caption j match (at least the
               diagonal). None is the identity: only pair i matches i, as in the paper. The
               target of each row is spread evenly over its matches. For repeated captions
               (``same_caption``) this changes neither the value nor the gradient -- identical
               token rows give identical logit columns -- but it says what the loss cannot
               do: it never goes below (1/N) sum_i log c_i, c_i the copies of caption i in the
               batch (lesson 10 draws that floor). Matches that are not identical rows
               (paraphrases) would change the loss.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a square (N, N) tensor, got {got}")
    n = logits.shape[0]
    if positives is None:
        labels = torch.arange(n, device=logits.device)  # (N,)
        # (CE over captions for each image + CE over images for each caption) / 2
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    if not isinstance(positives, Tensor) or positives.shape != logits.shape or positives.dtype != torch.bool:
        got = tuple(positives.shape) if isinstance(positives, Tensor) else type(positives).__name__
        raise ValueError(f"positives must be a bool tensor shaped like logits {tuple(logits.shape)}, got {got}")
    if not positives.diagonal().all():
        raise ValueError("positives must be True on the diagonal: image i always matches caption i")
    target = positives.float()
    # soft targets: each row (image -> captions) and each column (caption -> images) sums to 1
    return (F.cross_entropy(logits, target / target.sum(1, keepdim=True))
            + F.cross_entropy(logits.T, target.T / target.T.sum(1, keepdim=True))) / 2


def retrieval_scores(similarity: Tensor, caption_of_image: Tensor, k: int = 1) -> dict:
    """Top-k retrieval from an (N images, M distinct captions) similarity matrix.

    caption_of_image  (N,) int: the column of each image's own caption
    image_to_text  the fraction of images whose own caption is among their k best captions
    text_to_image  the fraction of captions with at least one of their own images among their
                   k best images (any image drawn from that caption is a right answer)
    k larger than the number of candidates means every candidate (accuracy 1).
    """
    if not isinstance(similarity, Tensor) or similarity.dim() != 2:
        raise ValueError(f"similarity must be a (N, M) tensor, got {getattr(similarity, 'shape', type(similarity))}")
    n, m = similarity.shape
    if (not isinstance(caption_of_image, Tensor) or caption_of_image.shape != (n,)
            or caption_of_image.is_floating_point()):
        raise ValueError(f"caption_of_image must be an integer tensor of shape ({n},)")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    best_captions = similarity.topk(min(k, m), dim=1).indices  # (N, k)
    image_to_text = (best_captions == caption_of_image[:, None]).any(dim=1).float().mean()
    best_images = similarity.topk(min(k, n), dim=0).indices  # (k, M)
    text_to_image = (caption_of_image[best_images] == torch.arange(m)).any(dim=0).float().mean()
    return {"text_to_image": text_to_image.item(), "image_to_text": image_to_text.item()}


@torch.no_grad()
def retrieval_accuracy(model: MiniCLIP, images: Tensor, captions: Sequence[str], k: int = 1,
                       batch_size: int = 500) -> dict:
    """Text -> image and image -> text top-k accuracy of ``model`` on images and their captions.

    Shapes captions repeat (one-object captions have only 300 spellings), and identical
    captions have identical embeddings, so "the right answer" is any image with the query's
    caption, and any copy of the image's caption. Hence each direction is scored against the
    distinct captions (see ``retrieval_scores``): chance is about (images per caption) / N for
    text -> image and 1 / (distinct captions) for image -> text.
    """
    captions = _check_captions(captions)
    if not isinstance(images, Tensor) or images.dim() != 4 or len(images) != len(captions):
        raise ValueError(f"images must be a (N, 3, H, W) tensor with one image per caption ({len(captions)})")
    distinct = list(dict.fromkeys(captions))
    column = {c: j for j, c in enumerate(distinct)}
    caption_of_image = torch.tensor([column[c] for c in captions])  # (N,)
    device = next(model.parameters()).device
    image_embeds = torch.cat([model.encode_image(x.to(device)) for x in images.split(batch_size)])  # (N, D)
    text_embeds = torch.cat([model.encode_text(*(t.to(device) for t in encode(chunk, model.max_length)))
                             for chunk in _chunks(distinct, batch_size)])  # (M, D)
    return retrieval_scores((image_embeds @ text_embeds.T).cpu(), caption_of_image, k)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@torch.no_grad()
def zero_shot_attributes(model: MiniCLIP, batch: data.ShapesBatch) -> dict:
    """Read one-object images by retrieval: for each image, the best of every one-object caption
    (every shape, colour, size, position and background of ``data.SHAPES``); per attribute, the
    fraction of images whose best caption names it right. Shows what the embedding encodes."""
    if batch.labels.shape[1] != 1:
        raise ValueError(f"zero_shot_attributes reads one-object images, got {batch.labels.shape[1]} objects per image")
    candidates = [f"a {size} {colour} {shape} in the {position} on {background}"
                  for size, colour, shape, position, background in itertools.product(
                      data.SIZES, data.COLOURS, data.SHAPES, data.POSITIONS, data.BACKGROUNDS)]
    device = next(model.parameters()).device
    text_embeds = model.encode_text(*(t.to(device) for t in encode(candidates, model.max_length)))  # (M, D)
    image_embeds = torch.cat([model.encode_image(x.to(device)) for x in batch.images.split(500)])  # (N, D)
    best = (image_embeds @ text_embeds.T).argmax(dim=1).tolist()  # (N,)
    read = [data.parse_caption(candidates[j]) for j in best]
    scores = {}
    for column in data.LABEL_COLUMNS:
        scores[column] = sum(r["objects"][0][column] == a["objects"][0][column]
                             for r, a in zip(read, batch.attributes)) / len(batch)
    scores["background"] = sum(r["background"] == a["background"] for r, a in zip(read, batch.attributes)) / len(batch)
    return scores


# ----------------------------------------------------------------------------------------
# the shapes-clip recipe
# ----------------------------------------------------------------------------------------

SHAPES_CLIP_CONFIG = {"max_length": CONTEXT_LENGTH, "embed_dim": 64, "text_width": 64, "text_layers": 2,
                      "text_heads": 4, "image_size": 32, "patch_size": 4, "vision_width": 64, "vision_layers": 2,
                      "vision_heads": 4, "mlp_ratio": 4}
# training data: mostly one object (what the LDM is prompted with), some two-object captions
# so that "and" and a second object mean something; "smoke" only proves the code path
SHAPES_CLIP_SIZES = {
    "full": {"steps": 600, "n_one": 24_000, "n_two": 8_000, "n_eval": 1_000},
    "smoke": {"steps": 3, "n_one": 192, "n_two": 64, "n_eval": 64},
}
SHAPES_CLIP_TRAIN = {"batch_size": 256, "lr": 1e-3, "weight_decay": 0.0, "grad_clip": 1.0, "seed": 0}


def shapes_clip_data(n_one: int, n_two: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(images (N, 3, 32, 32), input_ids (N, L), attention_mask (N, L)): n_one one-object and
    n_two two-object shapes images (both drawn with ``seed``) with their captions, N = n_one + n_two."""
    one = data.shapes(n_one, size=32, n_objects=1, seed=seed)
    two = data.shapes(n_two, size=32, n_objects=2, seed=seed)
    input_ids, attention_mask = encode(one.captions + two.captions, SHAPES_CLIP_CONFIG["max_length"])  # (N, L) each
    return torch.cat([one.images, two.images]), input_ids, attention_mask


def clip_loss(model: MiniCLIP, batch: tuple[Tensor, Tensor, Tensor], generator: torch.Generator) -> Tensor:
    """``train.fit``'s loss_fn: the symmetric contrastive loss, repeated captions counted as matches."""
    images, input_ids, attention_mask = batch
    return contrastive_loss(model(images, input_ids, attention_mask), same_caption(input_ids))


def evaluate_shapes_clip(model: MiniCLIP, profile: str | None) -> dict:
    """Top-1 retrieval both ways on new one-object and two-object images (seed 1; training used
    seed 0), top-5 for two objects, and zero-shot attribute reading of the one-object images."""
    sizes = SHAPES_CLIP_SIZES["smoke" if profile == "smoke" else "full"]
    one = data.shapes(sizes["n_eval"], size=32, n_objects=1, seed=1)
    two = data.shapes(sizes["n_eval"], size=32, n_objects=2, seed=1)
    scores = {}
    for name, batch, k in (("one_object", one, 1), ("two_objects", two, 1), ("two_objects", two, 5)):
        for direction, value in retrieval_accuracy(model, batch.images, batch.captions, k=k).items():
            scores[f"{name}_{direction}_top{k}"] = value
    scores |= {f"zero_shot_{attribute}": v for attribute, v in zero_shot_attributes(model, one).items()}
    return {key: round(v, 6) for key, v in scores.items()}


def train_shapes_clip(profile: str | None, progress: bool):
    """Train MiniCLIP(**SHAPES_CLIP_CONFIG) contrastively on shapes; returns (model, metrics, steps).

    Metrics: ``evaluate_shapes_clip`` and the mean loss of the last 100 steps.
    """
    sizes = SHAPES_CLIP_SIZES["smoke" if profile == "smoke" else "full"]
    images, input_ids, attention_mask = shapes_clip_data(sizes["n_one"], sizes["n_two"], seed=0)
    torch.manual_seed(SHAPES_CLIP_TRAIN["seed"])  # the initial weights
    model = MiniCLIP(**SHAPES_CLIP_CONFIG)
    result = train.fit(model, clip_loss, (images, input_ids, attention_mask), steps=sizes["steps"], device="cpu",
                       progress=progress, **SHAPES_CLIP_TRAIN)
    model.eval()
    scores = evaluate_shapes_clip(model, profile)
    scores["loss_last_100"] = round(sum(result.losses[-100:]) / len(result.losses[-100:]), 6)
    return model, scores, result.step


SHAPES_CLIP_RECIPE = (
    "MiniCLIP (transformers CLIPTextModel + CLIPVisionModel: width 64, 2 layers, 4 heads each; 32x32 images in "
    "patches of 4; 64-d shared space) on data.shapes(24000, n_objects=1, seed=0) + data.shapes(8000, n_objects=2, "
    "seed=0) with their captions (word-level tokenizer, 21 tokens); CLIP's symmetric contrastive loss with repeated "
    "captions counted as matches, learned temperature (init 1/0.07, scale clamped at 100); train.fit for 600 "
    "AdamW steps, batch 256, lr 1e-3, grad clip 1.0, seed 0, on the CPU. Metrics: top-1 retrieval both ways on "
    "1000 new one-object and 1000 two-object images (seed 1; top-5 too for two objects), and zero-shot reading of "
    "each attribute of the one-object images by their best one-object caption")
