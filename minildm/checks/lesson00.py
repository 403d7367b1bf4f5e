"""Checks for lesson 00 (setup and data): pixels in and out of the range diffusion works in.

Images arrive as uint8 arrays of shape (N, H, W, C) in [0, 255]; every model in these
lessons wants float tensors (N, C, H, W) in [-1, 1] (Ho et al. 2020, section 3.3 scale
the data the same way), and every picture we show goes back the other way. The shapes
dataset describes each image with a caption in a fixed grammar (see DESIGN.md).
"""

from __future__ import annotations

import numpy as np
import torch

from .core import Mistake, compare

__all__ = ["to_unit_range", "to_uint8", "caption_for"]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple")
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
BACKGROUNDS = ("black", "white")


# ---------------------------------------------------------------------------- to_unit_range

def _to_unit_range(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32)  # (N, C, H, W)
    # [0, 255] -> [-1, 1]:  x / 127.5 - 1
    return x / 127.5 - 1


def _uint8_images(generator: torch.Generator) -> dict:
    n, h, w = (int(torch.randint(lo, hi, (), generator=generator)) for lo, hi in ((1, 4), (4, 9), (5, 10)))
    images = torch.randint(0, 256, (n, h, w, 3), generator=generator, dtype=torch.uint8)
    images[0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)  # both ends of the range
    return {"images": images.numpy()}


def _to_zero_one(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32) / 255


def _reshape_not_permute(images):
    n, h, w, c = images.shape
    return torch.from_numpy(images).to(torch.float32).reshape(n, c, h, w) / 127.5 - 1


def _uint8_arithmetic(images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    return (x * 2).to(torch.float32) / 255 - 1  # x * 2 wraps around in uint8


def to_unit_range(learner) -> None:
    """Check ``learner(images)``: uint8 (N, H, W, C) in [0, 255] -> float32 (N, C, H, W) in [-1, 1]."""
    __tracebackhide__ = True
    compare(learner, _to_unit_range, _uint8_images, name="to_unit_range", mistakes=[
        Mistake("dividing by 255 only", _to_zero_one,
                "x / 255 lands in [0, 1]; diffusion wants [-1, 1]: x / 127.5 - 1 (= 2 x / 255 - 1)."),
        Mistake("reshape instead of permute", _reshape_not_permute,
                "reshape/view only reinterprets the memory, it scrambles pixels; to move the channel "
                "axis use .permute(0, 3, 1, 2)."),
        Mistake("arithmetic in uint8", _uint8_arithmetic,
                "uint8 arithmetic wraps around above 255 (200 * 2 = 144); convert to float first."),
    ], hint="torch.from_numpy(images), then .permute(0, 3, 1, 2), .float(), and map 0 -> -1, 255 -> 1.")


# ---------------------------------------------------------------------------- to_uint8

def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    # [-1, 1] -> [0, 255]:  (x + 1) * 127.5, clamped and rounded to the nearest integer
    pixels = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1)  # (N, H, W, C)


def _model_samples(generator: torch.Generator) -> dict:
    n, h, w = (int(torch.randint(lo, hi, (), generator=generator)) for lo, hi in ((1, 4), (4, 9), (5, 10)))
    # a sampler's output overshoots [-1, 1] a little
    x = 0.7 * torch.randn(n, 3, h, w, generator=generator)
    return {"x": x}


def _no_clamp(x):
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def _truncate(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1)


def to_uint8(learner) -> None:
    """Check ``learner(x)``: float (N, C, H, W) in about [-1, 1] -> uint8 (N, H, W, C) in [0, 255]."""
    __tracebackhide__ = True
    compare(learner, _to_uint8, _model_samples, name="to_uint8", atol=0, rtol=0, mistakes=[
        Mistake("no clamp", _no_clamp,
                "samples overshoot [-1, 1]; outside it (x + 1) * 127.5 leaves [0, 255] and wraps around "
                "in uint8 (-3 becomes 253). Clamp to [-1, 1] first."),
        Mistake("truncating instead of rounding", _truncate,
                ".to(torch.uint8) cuts off the fraction (254.9 becomes 254); .round() first."),
    ], hint="clamp to [-1, 1], map to [0, 255] with (x + 1) * 127.5, round, .to(torch.uint8), "
            "then .permute(0, 2, 3, 1) for (N, H, W, C).")


# ---------------------------------------------------------------------------- caption_for

def _caption_for(shape: str, colour: str, size: str, position: str, background: str) -> str:
    return f"a {size} {colour} {shape} in the {position} on {background}"


def _attributes(generator: torch.Generator) -> dict:
    def pick(values):
        return values[int(torch.randint(len(values), (), generator=generator))]

    return {"shape": pick(SHAPES), "colour": pick(COLOURS), "size": pick(SIZES),
            "position": pick(POSITIONS), "background": pick(BACKGROUNDS)}


def _colour_first(shape, colour, size, position, background):
    return f"a {colour} {size} {shape} in the {position} on {background}"


def _no_article(shape, colour, size, position, background):
    return f"a {size} {colour} {shape} in {position} on {background}"


def caption_for(learner) -> None:
    """Check ``learner(shape, colour, size, position, background)`` writes the shapes caption."""
    __tracebackhide__ = True
    compare(learner, _caption_for, _attributes, name="caption_for", n_cases=12, mistakes=[
        Mistake("colour before size", _colour_first,
                "the grammar puts the size first: 'a small red circle', not 'a red small circle'."),
        Mistake("no 'the' before the position", _no_article,
                "positions read 'in the top left', 'in the center'."),
    ], hint="the grammar is 'a {size} {colour} {shape} in the {position} on {background}', "
            "e.g. 'a small red circle in the top left on white'.")
