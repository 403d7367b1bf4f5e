"""The shapes judge: read colour, shape, size and position back from the pixels.

Because the shapes data set is drawn from a known vocabulary (``minildm.data``), a generated
image can be scored against its prompt without any learned network: this judge reads the
scene the way the renderer wrote it, so every decision can be explained from the pixels.
It is the "prompt adherence" half of lesson 08 (FID / KID measure the other half, how
realistic samples look), in the spirit of the compositional probes of Okawa et al. (2023).

How an image is read:

1. **background**: a light (1 2 1) blur against pixel noise, then the palette background
   (black / white) nearest the median border pixel.
2. **colour mixing**: every flat-coloured, anti-aliased pixel is ``p = b + alpha (c - b)``
   for the background b, a palette colour c and the coverage alpha. For each colour the
   pixel is projected on the segment from b to c; the colour whose segment passes nearest
   explains the pixel, and its alpha is the pixel's coverage.
3. **objects**: covered pixels form connected components; tiny ones (noise) are dropped.
   A component in which two palette colours each own an object's worth of pure pixels is
   split between them; one colour touching itself is peeled: the largest drawing of the
   vocabulary that fits inside is one shape, what is left the other -- kept only if two
   drawings explain the blob better than one.
4. **attributes** of each object:

   * colour   -- the palette colour whose mixing segment best explains the object's pixels
   * shape, size -- those of the drawing (each shape at each size, as the renderer draws
                 it: a template) that, laid with its centroid on the object's coverage
                 centroid, differs least from it (sum of |coverage - template|). Matching
                 whole drawings, not a single feature such as the box's fill ratio (square 1,
                 circle pi/4, triangle 1/2, star about 1/3), is what keeps a blurred, noisy
                 16-pixel star apart from a triangle.
   * position -- the nearest ``anchor(position, size)`` to the object's nominal centre
                 (its centroid, less the matched drawing's centroid offset).

``read`` returns what it sees; ``score`` compares that with ``parse_caption(prompt)``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from scipy.signal import correlate
from torch import Tensor

from minildm.data import (ALL_SHAPES, BACKGROUNDS, COLOURS, POSITIONS, SIZES, anchor,
                          parse_caption, render)

MIN_SIZE = 16  # smallest canvas side the judge reads
# a pixel belongs to an object where its coverage is at least this; below the renderer's
# 1/2 because the judge blurs first, which would thin the tips of a 16-pixel star away
COVERED = 0.4
# a drawing fits inside a blob when at least this fraction of its pixels lie on the blob
FIT = 0.9
# a background further than this from black or white in some channel (in [-1, 1] units:
# about 13 of 255) is mixed with as it is; closer, pixel noise would only bias it
OFF_PALETTE = 0.1
# a component smaller than this fraction of the smallest object (a small star) is noise
MIN_AREA_FRACTION = 0.3
# a star's inner radius over its tip radius (data._inside_star): r / h = cos 72 / cos 36
_STAR_R = math.cos(2 * math.pi / 5) / math.cos(math.pi / 5)
ATTRIBUTES = ("background", "count", "colour", "shape", "size", "position")

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float64) / 127.5 - 1  # (5, 3)
_BACKGROUND_RGB = np.array(list(BACKGROUNDS.values()), dtype=np.float64) / 127.5 - 1  # (2, 3)
_SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-connectivity


def _check_images(images) -> np.ndarray:
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, 3, H, W), got {type(images).__name__}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be a floating-point tensor in [-1, 1], got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, 3, S, S) with N >= 1 (square RGB canvases), "
                         f"got shape {tuple(images.shape)}")
    if images.shape[2] < MIN_SIZE or images.shape[2] % 4:
        raise ValueError(f"images must be at least {MIN_SIZE} pixels on a side and a multiple of 4 "
                         f"(the canvases data.shapes draws), got {images.shape[2]}")
    x = images.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(x).all():
        raise ValueError("images must be finite, got NaN or inf")
    if x.min() < -1 - 1e-3 or x.max() > 1 + 1e-3:
        raise ValueError(f"images must lie in [-1, 1] (clamp samples first), got values in "
                         f"[{x.min():.3g}, {x.max():.3g}]")
    return x


def _smooth(image: np.ndarray) -> np.ndarray:
    """A light blur, (1 2 1) / 4 along each axis, edges repeated: cuts pixel noise to about
    3/8 of its std while keeping straight edges where they are."""
    kernel = np.array([0.25, 0.5, 0.25])
    return ndimage.correlate1d(ndimage.correlate1d(image, kernel, -1, mode="nearest"), kernel, -2, mode="nearest")


def _background(image: np.ndarray) -> tuple[int, np.ndarray]:
    """The background: (index into BACKGROUNDS of the palette background nearest the median
    border pixel, the colour to mix with (3,)). That colour is the palette's, unless the
    image's own background is clearly another (a generated image's is often grey): then it is
    the median of the half of the border pixels nearest the palette background (so objects
    touching the border are left out)."""
    border = np.concatenate([image[:, 0], image[:, -1], image[:, 1:-1, 0], image[:, 1:-1, -1]], 1)  # (3, 4S - 4)
    bg = int(np.argmin(((_BACKGROUND_RGB - np.median(border, 1)) ** 2).sum(1)))
    distance = ((border - _BACKGROUND_RGB[bg][:, None]) ** 2).sum(0)  # (4S - 4,)
    measured = np.median(border[:, distance <= np.median(distance)], 1)  # (3,)
    if np.abs(measured - _BACKGROUND_RGB[bg]).max() <= OFF_PALETTE:
        return bg, _BACKGROUND_RGB[bg]
    return bg, measured


def _mixing(image: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel and palette colour c: the coverage alpha and the distance from the
    pixel to the mixing segment b + alpha (c - b), alpha in [0, 1]. Both (5, H, W)."""
    p = image - b[:, None, None]  # (3, H, W)
    d = _PALETTE - b  # (5, 3)
    # alpha = <p - b, c - b> / |c - b|^2, clipped to the segment
    alpha = np.clip(np.einsum("khw,ck->chw", p, d) / (d**2).sum(1)[:, None, None], 0, 1)  # (5, H, W)
    residual = p[None] - alpha[:, None] * d[:, :, None, None]  # (5, 3, H, W)
    return alpha, np.sqrt((residual**2).sum(1))


def _peel(blob: np.ndarray, min_area: float) -> list[np.ndarray]:
    """Two shapes of one colour touching: lay the largest drawing in the vocabulary that
    fits inside the blob (at least FIT of it covered) where it fits best; what is left,
    if it is an object's worth of pixels, is the second shape. One piece back otherwise."""
    rows, cols = np.nonzero(blob)
    crop = blob[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(float)  # the blob's box
    best = None
    for template, _ in _templates(blob.shape[0]).values():
        t_rows, t_cols = np.nonzero(template >= 0.5)
        inside = template[t_rows.min():t_rows.max() + 1, t_cols.min():t_cols.max() + 1] >= 0.5  # its box
        if inside.shape[0] > crop.shape[0] or inside.shape[1] > crop.shape[1]:
            continue
        # fraction of the drawing's pixels on the blob, for every placement inside the box
        fit = correlate(crop, inside.astype(float), mode="valid") / inside.sum()
        top, left = np.unravel_index(fit.argmax(), fit.shape)
        if fit[top, left] >= FIT and (best is None or inside.sum() > best[0].sum()):
            best = inside, top + rows.min(), left + cols.min()
    if best is None:
        return [blob]
    inside, top, left = best
    first = np.zeros_like(blob)
    first[top:top + inside.shape[0], left:left + inside.shape[1]] = inside
    # the rest, without the one-pixel slivers a misplaced edge leaves
    rest = ndimage.binary_opening(blob & ~first, _SQUARE)
    labels, n = ndimage.label(rest, _SQUARE)
    if n == 0:
        return [blob]
    areas = ndimage.sum_labels(rest, labels, range(1, n + 1))
    if areas.max() < min_area:
        return [blob]
    second = labels == areas.argmax() + 1
    return _assign_to_nearest(blob, [first & blob, second])


def _assign_to_nearest(component: np.ndarray, seeds: list[np.ndarray]) -> list[np.ndarray]:
    """Each pixel of the component goes to the seed nearest it (Euclidean)."""
    distances = np.stack([ndimage.distance_transform_edt(~s) for s in seeds])  # (K, H, W)
    nearest = distances.argmin(0)  # (H, W)
    return [component & (nearest == k) for k in range(len(seeds))]


def _components(alpha: np.ndarray, distance: np.ndarray, min_area: float) -> list[np.ndarray]:
    """The masks (H, W) of the blobs: components of covered pixels, split where two
    palette colours meet; tiny components (noise) dropped."""
    best = distance.argmin(0)  # (H, W): the palette colour explaining each pixel
    coverage = np.take_along_axis(alpha, best[None], 0)[0]  # (H, W)
    covered = coverage >= COVERED
    labels, n = ndimage.label(covered, _SQUARE)
    objects = []
    for k in range(1, n + 1):
        component = labels == k
        if component.sum() < min_area:
            continue
        # colours that own at least min_area pure pixels (well covered, on the colour's mixing
        # segment, unlike the blends along the edge where two colours meet) seed one object each
        pure = component & (coverage >= 0.75) & (distance.min(0) < 0.25)
        seeds = [pure & (best == c) for c in range(len(_PALETTE))]
        seeds = [s for s in seeds if s.sum() >= min_area]
        objects.extend(_assign_to_nearest(component, seeds) if len(seeds) >= 2 else [component])
    return objects


@functools.cache
def _templates(size: int) -> dict:
    """Each (shape, size) as the renderer draws it at the canvas centre: its smoothed
    coverage (S, S) and its centroid's offset (x, y) from the nominal centre, in pixels."""
    templates = {}
    for shape, obj_size in itertools.product(ALL_SHAPES, SIZES):
        obj = {"shape": shape, "colour": "red", "size": obj_size, "position": "center"}
        image = _smooth(render(obj, background="black", size=size).images[0].double().numpy())
        alpha, _ = _mixing(image, _BACKGROUND_RGB[0])
        coverage = alpha[list(COLOURS).index("red")]  # (S, S)
        templates[shape, obj_size] = (coverage, np.array(_centroid(coverage)) - size / 2)
    return templates


def _centroid(coverage: np.ndarray) -> tuple[float, float]:
    """Coverage-weighted centre (x, y) in pixels, 0 = the left / top edge of the canvas."""
    y, x = ndimage.center_of_mass(coverage)
    return x + 0.5, y + 0.5


def _describe(mask: np.ndarray, alpha: np.ndarray, distance: np.ndarray, others: np.ndarray) -> dict:
    """Colour, shape, size and position of one object: its colour is the palette colour
    whose mixing segment explains its pixels best; shape and size are those of the drawing
    (template) that, laid over the object's centroid, differs least from its coverage."""
    size = mask.shape[0]
    colour = int(distance[:, mask].mean(1).argmin())
    # the object's anti-aliased rim: its mask grown by a pixel, minus other objects
    region = ndimage.binary_dilation(mask, _SQUARE) & ~others
    coverage = np.where(region, alpha[colour], 0.0)  # (S, S)
    x, y = _centroid(coverage)
    misfit = {}
    for key, (template, offset) in _templates(size).items():
        # slide the template so that its centroid lands on the object's (bilinear, sub-pixel)
        moved = ndimage.shift(template, (y - size / 2 - offset[1], x - size / 2 - offset[0]), order=1)
        # misfit = sum |coverage - template| outside the other objects, over the object's area
        misfit[key] = np.abs(coverage - moved)[~others].sum() / coverage.sum()
    shape, obj_size = min(misfit, key=misfit.get)
    offset = _templates(size)[shape, obj_size][1]
    centre = ((x - offset[0]) / size, (y - offset[1]) / size)  # the nominal centre, as fractions
    position = min(POSITIONS, key=lambda p: math.dist(centre, anchor(p, obj_size)))
    return {"shape": shape, "colour": list(COLOURS)[colour], "size": obj_size, "position": position,
            "mask": torch.from_numpy(mask.copy()), "centre": centre, "misfit": float(misfit[shape, obj_size])}


def read(images: Tensor) -> list[dict]:
    """What each image (N, 3, S, S) in [-1, 1] shows, read from its pixels:
    ``{"background": name, "objects": [{"shape", "colour", "size", "position", "mask",
    "centre", "misfit"}, ...]}``, objects in reading order (top to bottom, left to right).
    ``mask`` is a (S, S) bool tensor; ``centre`` (x, y as fractions of the side) is the
    nominal centre the position came from; ``misfit`` is how far the object is from the
    drawing it matched (sum |coverage - template| over its area: about 0.05 clean, a few
    tenths noisy; near 1 means it looks like nothing in the vocabulary)."""
    x = _check_images(images)
    size = x.shape[2]
    # the smallest object the renderer draws: a small star, area 10 * (1/2) h r sin 36
    h = SIZES["small"] * size / 2
    min_area = MIN_AREA_FRACTION * 5 * h * h * _STAR_R * math.sin(math.pi / 5)
    scenes = []
    for image in x:
        image = _smooth(image)  # (3, S, S)
        bg, b = _background(image)
        alpha, distance = _mixing(image, b)
        objects = []
        for blob in _components(alpha, distance, min_area):
            whole = _describe(blob, alpha, distance, np.zeros_like(blob))
            pieces = _peel(blob, min_area)
            if len(pieces) > 1:
                # two shapes touching, if two drawings explain the blob better than one
                split = [_describe(p, alpha, distance, blob & ~p) for p in pieces]
                if max(o["misfit"] for o in split) < whole["misfit"]:
                    objects.extend(split)
                    continue
            objects.append(whole)
        objects.sort(key=lambda o: tuple(np.argwhere(o["mask"].numpy())[0]))
        scenes.append({"background": list(BACKGROUNDS)[bg], "objects": objects})
    return scenes


@dataclass
class Score:
    """How well images follow their prompts.

    rates    fraction of images right on each of ATTRIBUTES, and "all" (everything right);
             colour / shape / size / position count an image right only if every object is
    details  per image: {"prompt", "expected", "read", "correct": {attribute: bool}}
    """

    rates: dict
    details: list


def _match(expected: list[dict], found: list[dict]) -> list[dict | None]:
    """For each expected object, the found object at its position (None if there is none);
    with one object each they are paired whatever the position."""
    if len(expected) == 1 and len(found) == 1:
        return [found[0]]
    by_position = {}
    for f in found:
        by_position.setdefault(f["position"], f)
    return [by_position.get(e["position"]) for e in expected]


def score(images: Tensor, prompts: Sequence[str]) -> Score:
    """Score images against their prompts (captions in the shapes grammar, one per image).

    Objects are paired by position (two-object prompts name two positions); an object that
    is missing, or not at its position, counts as wrong on colour, shape, size and position.
    """
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of caption strings, got {type(prompts).__name__}")
    scenes = read(images)
    if len(prompts) != len(scenes):
        raise ValueError(f"prompts must give one caption per image: {len(scenes)} images, {len(prompts)} prompts")
    details = []
    for prompt, scene in zip(prompts, scenes):
        expected = parse_caption(prompt)
        found = _match(expected["objects"], scene["objects"])
        correct = {"background": scene["background"] == expected["background"],
                   "count": len(scene["objects"]) == len(expected["objects"])}
        for key in ("colour", "shape", "size", "position"):
            correct[key] = all(f is not None and f[key] == e[key] for e, f in zip(expected["objects"], found))
        details.append({"prompt": prompt, "expected": expected, "read": scene, "correct": correct})
    rates = {key: float(np.mean([d["correct"][key] for d in details])) for key in ATTRIBUTES}
    rates["all"] = float(np.mean([all(d["correct"].values()) for d in details]))
    return Score(rates=rates, details=details)
