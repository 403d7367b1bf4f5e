"""A small image classifier: it names what is in an image, and its features stand in for Inception's.

FID and KID (lesson 08) compare two image distributions through the features of a network
trained to recognise images; Heusel et al. (2017) use Inception-v3's 2048-d pool features.
We cannot download Inception, and on 16x16 digits or 32x32 shapes it would see nonsense
anyway, so each data set gets its own small CNN, trained in seconds and shipped
(``digits-classifier``, ``shapes-classifier``). Its pooled features are the "perceptual"
space of our metrics, and its predictions give label agreement: did the model draw the class
it was asked for?

The network is three stages of two 3x3 convolutions (GroupNorm, SiLU), halving the
resolution between stages, then global average pooling to a ``feature_dim`` vector and one
linear head per attribute (``heads``: name -> number of classes).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """conv3x3 (stride) -> GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU())


class Classifier(nn.Module):
    """A CNN with one softmax head per attribute; ``features`` gives its pooled features.

    in_channels  1 (digits) or 3 (shapes)
    heads        {attribute name: number of classes}, e.g. {"digit": 10}
    image_size   the side it is trained at; inputs of another size are resized to it
                 (bilinear), as torchmetrics resizes every image to Inception's 299
    width        channels of the first stage (then 2x, 4x)
    feature_dim  the length of the feature vector (``num_features``, read by torchmetrics)
    Images are (B, in_channels, H, W) floats in [-1, 1], like every image in minildm.
    """

    def __init__(self, in_channels: int = 1, heads: Mapping[str, int] | None = None, image_size: int = 16,
                 width: int = 32, feature_dim: int = 128):
        super().__init__()
        heads = {"digit": 10} if heads is None else heads
        for name, value in (("in_channels", in_channels), ("image_size", image_size), ("width", width),
                            ("feature_dim", feature_dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if width % 8 or feature_dim % 8:
            raise ValueError(f"width and feature_dim must be multiples of 8 (GroupNorm(8, .)), got {width}, {feature_dim}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        if (not isinstance(heads, Mapping) or not heads
                or any(not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 2
                       for k, v in heads.items())):
            raise ValueError(f"heads must map attribute names to class counts >= 2, got {heads!r}")
        self.in_channels, self.image_size, self.num_features = int(in_channels), int(image_size), int(feature_dim)
        self.heads = {k: int(v) for k, v in heads.items()}
        self.body = nn.Sequential(
            _block(in_channels, width, 1),  # (B, w, S, S)
            _block(width, 2 * width, 2),  # (B, 2w, S/2, S/2)
            _block(2 * width, feature_dim, 2),  # (B, D, S/4, S/4)
        )
        self.out = nn.ModuleDict({name: nn.Linear(feature_dim, k) for name, k in self.heads.items()})

    def _checked(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a float tensor (B, {self.in_channels}, H, W) in [-1, 1], got {got}")
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, feature_dim): the globally average-pooled last feature map."""
        return self.body(self._checked(x)).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """(B, C, H, W) -> {head: logits (B, classes)}."""
        h = self.features(x)
        return {name: head(h) for name, head in self.out.items()}

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 512) -> dict[str, Tensor]:
        """{head: predicted class (B,)}, in eval mode, ``batch_size`` images at a time."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        parts = [self(chunk.to(device)) for chunk in x.split(batch_size)]
        self.train(was_training)
        return {name: torch.cat([p[name].argmax(1) for p in parts]).cpu() for name in self.heads}


def cross_entropy(logits: Mapping[str, Tensor], labels: Mapping[str, Tensor]) -> Tensor:
    """The sum over heads of the mean cross-entropy: the classifier's training loss."""
    return sum(F.cross_entropy(logits[name], labels[name]) for name in logits)
