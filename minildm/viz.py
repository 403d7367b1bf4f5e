"""Pictures for the lessons: image grids, noising strips, 2-D trajectories and GIFs.

Diffusion is easiest to understand by looking at it: x0 dissolving into noise along the
forward process q(x_t | x0) (Ho et al. 2020, eq. 4), a cloud of 2-D points flowing back to
the data (Sohl-Dickstein et al. 2015, fig. 1), samples sharpening over the reverse steps.

matplotlib only. Every function returns its Figure (or, for ``gif``, the file's path), so a
notebook can show it (end the cell with ``;`` or call ``plt.show()``), the book can embed it
and a test can inspect it. Figures are made through pyplot so a notebook displays them;
close them (``plt.close(fig)``) when you make many in a loop. Images are tensors in [-1, 1],
(N, C, H, W) or (C, H, W), with 1 or 3 channels.
"""

from __future__ import annotations

import math
import pathlib
import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

PANEL_INCHES = 1.4  # side of one image panel at scale=1


def to_uint8(images) -> np.ndarray:
    """[-1, 1] images, (N, C, H, W) or (C, H, W), to uint8 (N, H, W, C) or (H, W, C).

    Values outside [-1, 1] are clamped first, so -1 and below give 0, 1 and above 255.
    """
    x = torch.as_tensor(images).detach().to("cpu", torch.float64)
    if x.dim() not in (3, 4):
        raise ValueError(f"images must be (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-3] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels in dim -3, got shape {tuple(x.shape)}")
    # [-1, 1] -> [0, 255]:  u = round((x + 1) * 127.5)
    u = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u.movedim(-3, -1).numpy()  # (N, H, W, C) or (H, W, C)


def _batch(images) -> np.ndarray:
    """Any image or batch of images to uint8 (N, H, W, C)."""
    u = to_uint8(images)
    return u[None] if u.ndim == 3 else u


def tile(images, *, nrow: int = 8, padding: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Lay a batch out as one uint8 RGB picture (H', W', 3): nrow images per row, padding
    pixels of pad_value (in [-1, 1]) between them -- torchvision's make_grid, in numpy."""
    if nrow < 1 or padding < 0:
        raise ValueError(f"nrow must be >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    u = _batch(images)
    u = np.repeat(u, 3, axis=-1) if u.shape[-1] == 1 else u  # (N, H, W, 3)
    n, h, w, _ = u.shape
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    fill = to_uint8(torch.full((3, 1, 1), float(pad_value)))[0, 0]
    out = np.empty((rows * (h + padding) + padding, cols * (w + padding) + padding, 3), np.uint8)
    out[:] = fill
    for i in range(n):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        out[top:top + h, left:left + w] = u[i]
    return out


def _imshow(ax, image: np.ndarray) -> None:
    """One uint8 (H, W, C) image on an axes, without ticks; grayscale with a gray colormap."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()


def grid(images, *, nrow: int = 8, titles: Sequence[str] | None = None, title: str | None = None,
         scale: float = 1.0, fontsize: float = 8) -> Figure:
    """A figure with one panel per image, nrow panels per row; titles label the panels,
    title the figure. ``len(fig.axes)`` equals the number of images."""
    u = _batch(images)
    n = len(u)
    if isinstance(nrow, bool) or not isinstance(nrow, int) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must have one entry per image ({n}), got {len(titles)}")
    cols, rows = min(nrow, n), math.ceil(n / nrow)
    lines = 0 if titles is None else max(str(t).count("\n") + 1 for t in titles)
    extra = lines * fontsize * 1.5 / 72  # inches of title text above each row
    height = (scale * PANEL_INCHES + extra) * rows + 0.4 * (title is not None)
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(scale * PANEL_INCHES * cols, height))
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.remove()
            continue
        _imshow(ax, u[i])
        if titles is not None:
            ax.set_title(titles[i], fontsize=fontsize)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def captioned_grid(images, captions: Sequence[str], *, nrow: int = 4, width: int = 22,
                   scale: float = 1.6, title: str | None = None) -> Figure:
    """A grid with each image's caption wrapped to ``width`` characters above it (shapes)."""
    wrapped = [textwrap.fill(str(c), width) for c in captions]
    return grid(images, nrow=nrow, titles=wrapped, title=title, scale=scale, fontsize=6.5)


def noising_strip(x0, schedule, ts: Sequence[int], *, generator: torch.Generator | None = None,
                  title: str | None = None, scale: float = 1.0) -> Figure:
    """x0 noised by the forward process at each t in ts, one column per t.

    x0 is one image (C, H, W) or a batch (N, C, H, W) -- one row per image. One noise draw
    is reused for every t, so the columns show the same noise taking over:
    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps. ``schedule`` needs
    ``q_sample(x0, t, noise)``; if it has ``alpha_bar`` each column title shows it too.
    """
    x0 = torch.as_tensor(x0).detach().cpu()
    x0 = x0[None] if x0.dim() == 3 else x0  # (N, C, H, W)
    if x0.dim() != 4:
        raise ValueError(f"x0 must be (C, H, W) or (N, C, H, W), got shape {tuple(x0.shape)}")
    ts = [int(t) for t in ts]
    if not ts:
        raise ValueError("ts must list at least one timestep")
    alpha_bar = getattr(schedule, "alpha_bar", None)
    if alpha_bar is not None and not all(0 <= t < len(alpha_bar) for t in ts):
        raise ValueError(f"every t in ts must lie in 0..{len(alpha_bar) - 1}, got {ts}")
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)  # (N, C, H, W)
    n = len(x0)
    height = scale * PANEL_INCHES * n + 0.5 + 0.4 * (title is not None)
    fig, axes = plt.subplots(n, len(ts), squeeze=False, figsize=(scale * PANEL_INCHES * len(ts), height))
    for col, t in enumerate(ts):
        x_t = schedule.q_sample(x0, torch.full((n,), t, dtype=torch.long), noise)  # (N, C, H, W)
        for row in range(n):
            _imshow(axes[row, col], to_uint8(x_t[row]))
        label = f"t = {t}"
        if alpha_bar is not None:
            label += "\n" + rf"$\bar\alpha_t$ = {float(alpha_bar[t]):.3f}"
        axes[0, col].set_title(label, fontsize=8)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def trajectory(points_list, *, ts: Sequence[int] | None = None, data=None, title: str | None = None,
               lim: float | None = None, scale: float = 1.0, s: float = 2.0) -> Figure:
    """One scatter panel per (n, 2) point cloud in points_list (e.g. x_t of a 2-D diffusion
    at several t), titled "t = ..." when ts is given, with ``data`` (m, 2) in grey behind
    every panel. All panels share square limits +-lim (default: just past the largest |coordinate|)."""
    clouds = [torch.as_tensor(p).detach().cpu().double().numpy() for p in points_list]
    if not clouds:
        raise ValueError("points_list must hold at least one (n, 2) point cloud")
    for i, p in enumerate(clouds):
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"points_list[{i}] must have shape (n, 2), got {p.shape}")
    if ts is not None and len(ts) != len(clouds):
        raise ValueError(f"ts must have one entry per point cloud ({len(clouds)}), got {len(ts)}")
    background = None if data is None else torch.as_tensor(data).detach().cpu().double().numpy()
    if lim is None:
        everything = np.concatenate(clouds + ([] if background is None else [background]))
        lim = 1.05 * float(np.abs(everything[np.isfinite(everything)]).max(initial=1.0))
    size = scale * 2.2
    fig, axes = plt.subplots(1, len(clouds), squeeze=False, figsize=(size * len(clouds), size + 0.4 * (title is not None)))
    for i, (ax, p) in enumerate(zip(axes[0], clouds)):
        if background is not None:
            ax.scatter(background[:, 0], background[:, 1], s=s, c="0.8", linewidths=0)
        ax.scatter(p[:, 0], p[:, 1], s=s, c="C0", linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if ts is not None:
            ax.set_title(f"t = {int(ts[i])}", fontsize=9)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _frame(frame, nrow: int, scale: int) -> Image.Image:
    """One GIF frame: a Figure as drawn, or images (tiled into a grid, enlarged scale times)."""
    if isinstance(frame, Figure):
        frame.canvas.draw()
        return Image.fromarray(np.asarray(frame.canvas.buffer_rgba())[..., :3].copy())
    picture = Image.fromarray(tile(frame, nrow=nrow))
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def gif(frames, path, *, fps: float = 10, scale: int = 4, nrow: int = 8, loop: int = 0) -> pathlib.Path:
    """Write an animated GIF and return its path.

    frames: a list whose items are image batches (N, C, H, W) in [-1, 1] (each laid out as
    one grid), single images (C, H, W), or matplotlib Figures; or a tensor (F, N, C, H, W)
    or (F, C, H, W) with F frames. Image frames are enlarged ``scale`` times (nearest
    neighbour). loop=0 repeats forever. Pillow merges consecutive identical frames.
    """
    if isinstance(frames, (Tensor, np.ndarray)):
        if frames.ndim not in (4, 5):
            raise ValueError(f"a frames tensor must be (F, N, C, H, W) or (F, C, H, W), got shape {tuple(frames.shape)}")
        frames = list(frames)
    if not isinstance(frames, Sequence) or not frames:
        raise ValueError("frames must be a non-empty list of image batches, images or Figures")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    pictures = [_frame(f, nrow, scale) for f in frames]
    sizes = {p.size for p in pictures}
    if len(sizes) != 1:
        raise ValueError(f"all frames must have the same size, got {sorted(sizes)}")
    path = pathlib.Path(path)
    pictures[0].save(path, format="GIF", save_all=True, append_images=pictures[1:],
                     duration=round(1000 / fps), loop=loop)
    return path
