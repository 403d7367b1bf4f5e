"""The control explorer (lesson 14): steer a locked text-to-image LDM with a ControlNet and a condition image.

ControlNet (Zhang, Rao & Agrawala 2023) adds to the locked U-Net's skips and middle block the
residuals of a trainable copy that sees a condition image c, times a control scale s:

    skip_k <- skip_k + s Z_k(F_k(z_t + Z(c); Theta_c))      (and the same for the middle block)

so s = 0 is the base model exactly and s = 1 is what the ControlNet was trained at. The
explorer picks a condition image (one of a few shapes ``targets``), the kind of condition fed
to the ControlNet -- its exact **edges** (what shapes-controlnet-edges was trained on), the
filled **mask** (a different picture of the same outline), a hand-drawn **scribble**
(``data.scribble``: wobbly and broken), or **none** (the base model alone) -- the control scale,
the seed, and guess mode (the empty prompt, residuals weighted by logspace(-1, 0, n) and the
unconditional branch left uncontrolled, as diffusers does). Each sample is titled with the IoU
between the objects the shapes judge reads in it and the target's mask: how well the outline was
followed; the colour should follow the prompt.

``control_samples`` samples one setting; ``samples_figure`` draws it (what the explorer shows);
``control_figure`` is the static fallback: the same picture at several control scales, one row
each. ``minildm.widgets`` re-exports ``ControlExplorer``, ``control_explorer`` and ``control_figure``.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ipywidgets
import torch
from matplotlib.figure import Figure
from torch import Tensor

from . import data as _data
from . import ldm as _ldm
from .controlnet import ControlNet, MultiControlNet
from .denoise_explorer import _check_parts
from .recipes import mask_iou, prompt_colour_rate
from .widgets import MAX_SEED, SettingsCache, _check_int_arg, _check_scale, _show, _show_png, figure_png

__all__ = ["CONDITION_KINDS", "ControlSamples", "condition_image", "control_samples", "samples_figure",
           "control_figure", "ControlExplorer", "control_explorer"]

CONDITION_KINDS = ("edges", "mask", "scribble", "none")
CONTROL_STEPS = 20  # DDIM steps: a few samples with guidance and control in about a second for shapes-ldm on a CPU
CONTROL_DPI = 90
CACHE_SIZE = 32  # settings kept by an explorer: going back to one seen before costs nothing
PROMPT_WIDTH = 60
DEFAULT_PROMPT = "a large purple square in the center on white"
DEFAULT_SCALES = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class ControlSamples:
    """``n`` samples of one prompt steered by one condition image.

    ``condition`` (1, 1, H, W) in [-1, 1] what the ControlNet saw (None for kind "none");
    ``target`` (1, 1, H, W) in {0, 1} the mask the outline came from; ``images`` (n, 3, H, W) in
    [-1, 1]; ``iou`` (n,) IoU of the judge's object masks with ``target``; ``colour`` (n,) 1.0 where
    every object read has the prompt's colour (None in guess mode: there is no prompt).
    """

    prompt: str
    kind: str
    scale: float
    guess_mode: bool
    seed: int
    condition: Tensor | None
    target: Tensor
    images: Tensor
    iou: Tensor
    colour: Tensor | None
    seconds: float


def _check_controlnet(controlnet, unet) -> None:
    if not isinstance(controlnet, (ControlNet, MultiControlNet)):
        raise TypeError(f"controlnet must be a minildm ControlNet (e.g. shapes-controlnet-edges), "
                        f"got {type(controlnet).__name__}")
    net = controlnet if isinstance(controlnet, ControlNet) else controlnet.nets[0]
    if isinstance(controlnet, MultiControlNet) or net.condition_channels != 1:
        raise ValueError("the explorer feeds one one-channel condition image: give a single ControlNet "
                         "with condition_channels=1")
    if net.in_channels != getattr(unet, "in_channels", net.in_channels):
        raise ValueError(f"controlnet was copied from a U-Net with {net.in_channels} input channels, "
                         f"but unet reads {unet.in_channels}")


def _check_kind(kind) -> str:
    if kind not in CONDITION_KINDS:
        raise ValueError(f"unknown condition kind {kind!r}; choose from {list(CONDITION_KINDS)}")
    return kind


def _check_targets(targets) -> _data.ShapesBatch:
    if not isinstance(targets, _data.ShapesBatch) or len(targets) == 0:
        raise TypeError(f"targets must be a non-empty data.ShapesBatch (e.g. data.render(...) or "
                        f"recipes.controlnet_conditions(...)[0]), got {type(targets).__name__}")
    return targets


def condition_image(target: _data.ShapesBatch, kind: str, seed: int = 0) -> Tensor | None:
    """What the ControlNet sees for one target image (a ShapesBatch of length 1): (1, 1, H, W) in
    [-1, 1] -- its ``edges``, its mask as 2 m - 1, ``data.scribble`` of its mask (seeded), or None."""
    kind = _check_kind(kind)
    if kind == "edges":
        return target.edges
    if kind == "mask":
        return 2 * target.masks - 1
    if kind == "scribble":
        return _data.scribble(target.masks, seed)
    return None


@torch.no_grad()
def control_samples(unet, vae, clip, schedule, controlnet, target: _data.ShapesBatch, prompt: str, *,
                    kind: str = "edges", scale: float = 1.0, guess_mode: bool = False, n: int = 4,
                    steps: int = CONTROL_STEPS, guidance_scale: float = 3.0, seed: int = 0) -> ControlSamples:
    """``n`` samples (DDIM, ``steps`` steps, guidance ``guidance_scale``, noise seeded ``seed``) of
    ``prompt`` -- the empty prompt in guess mode -- steered by ``condition_image(target, kind, seed)``
    at control ``scale``; each read by the shapes judge. Put the models in eval mode first."""
    _check_parts(unet, vae, clip, schedule)
    _check_controlnet(controlnet, unet)
    target = _check_targets(target)[:1]
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    n = _check_int_arg("n", n, 1)
    steps = _check_int_arg("steps", steps, 1, schedule.T)
    scale = _check_scale(scale, "scale")
    seed = _check_int_arg("seed", seed, 0)
    condition = condition_image(target, kind, seed)
    asked = _ldm.EMPTY_PROMPT if guess_mode else prompt
    control = {} if condition is None else {"control": controlnet, "condition": condition.expand(n, -1, -1, -1),
                                            "control_scale": scale, "guess_mode": guess_mode}
    start = time.perf_counter()
    images = _ldm.sample(unet, vae, clip, schedule, [asked] * n, steps=steps, guidance_scale=guidance_scale,
                         seed=seed, size=target.images.shape[-1], **control)  # (n, 3, H, W)
    seconds = time.perf_counter() - start
    masks = target.masks.expand(n, -1, -1, -1)  # (n, 1, H, W)
    colour = None if guess_mode or not prompt else prompt_colour_rate(images, [prompt] * n)
    return ControlSamples(prompt, kind, scale, bool(guess_mode), seed, condition, target.masks, images,
                          mask_iou(images, masks), colour, seconds)


def _image_axes(ax, image: Tensor, title: str | None = None) -> None:
    _show(ax, image)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=8)


def _condition_panel(ax, samples: ControlSamples) -> None:
    """The condition as the ControlNet sees it (gray), or, with none, the target mask it is judged by."""
    if samples.condition is None:
        _image_axes(ax, 2 * samples.target[0] - 1, "no control\n(target mask)")
        ax.images[0].set_alpha(0.35)
    else:
        _image_axes(ax, samples.condition[0], f"condition: {samples.kind}")


def _row_label(samples: ControlSamples) -> str:
    if samples.condition is None:
        return f"no control\nIoU {samples.iou.mean():.2f}"
    guess = ", guess" if samples.guess_mode else ""
    return f"scale {samples.scale:g}{guess}\nIoU {samples.iou.mean():.2f}"


def _draw_row(axes, samples: ControlSamples) -> None:
    _condition_panel(axes[0], samples)
    for k, ax in enumerate(axes[1:]):
        _image_axes(ax, samples.images[k], f"IoU {samples.iou[k]:.2f}")
    axes[0].set_ylabel(_row_label(samples), fontsize=9)


def _prompt_line(samples: ControlSamples) -> str:
    said = "the empty prompt (guess mode)" if samples.guess_mode else repr(samples.prompt)
    return textwrap.fill(f"prompt: {said}", PROMPT_WIDTH)


def samples_figure(samples: ControlSamples) -> Figure:
    """One row: the condition (axis 0), then the samples (axes 1 ... n), each titled with its IoU
    with the target mask; the title gives the prompt, the scale, the mean IoU and the colour rate."""
    if not isinstance(samples, ControlSamples):
        raise TypeError(f"samples must be ControlSamples (from control_samples), got {type(samples).__name__}")
    n = len(samples.images)
    fig = Figure(figsize=(1.6 * (n + 1) + 0.9, 2.7))  # fixed margins: a layout engine would slow every redraw
    fig.subplots_adjust(left=0.9 / (1.6 * (n + 1) + 0.9), right=0.98, top=0.62, bottom=0.04, wspace=0.12)
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    _draw_row(axes, samples)
    colour = "" if samples.colour is None else f", prompt's colour in {samples.colour.mean():.0%}"
    fig.suptitle(f"{_prompt_line(samples)}\nmean IoU with the target {samples.iou.mean():.2f}{colour}",
                 fontsize=9, y=0.98, va="top")
    return fig


def control_figure(unet, vae, clip, schedule, controlnet, target: _data.ShapesBatch,
                   prompt: str = DEFAULT_PROMPT, *, kind: str = "edges", scales: Sequence[float] = DEFAULT_SCALES,
                   guess_mode: bool = False, n: int = 4, steps: int = CONTROL_STEPS, guidance_scale: float = 3.0,
                   seed: int = 0) -> Figure:
    """The control explorer as a static picture: one row per control scale in ``scales`` (the same
    noise in every row), each the condition then ``n`` samples titled with their IoU."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise ValueError(f"scales must be a non-empty list of control scales, got {scales!r}")
    rows = [control_samples(unet, vae, clip, schedule, controlnet, target, prompt, kind=kind, scale=s,
                            guess_mode=guess_mode, n=n, steps=steps, guidance_scale=guidance_scale, seed=seed)
            for s in scales]
    cell = 1.35
    fig = Figure(figsize=(cell * (n + 1) + 1.0, cell * len(rows) + 0.9))
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=1.0 / width, right=0.99, top=1 - 0.75 / height, bottom=0.05 / height,
                        wspace=0.1, hspace=0.35)
    axes = fig.subplots(len(rows), n + 1, squeeze=False)
    for r, samples in enumerate(rows):
        _draw_row(axes[r], samples)
    fig.suptitle(f"ControlNet scale sweep, condition: {kind}, seed {seed}\n{_prompt_line(rows[0])}",
                 fontsize=9, y=1 - 0.05 / height, va="top")
    return fig


class ControlExplorer(ipywidgets.VBox):
    """The control explorer: a prompt box, the condition image and its kind, control scale, seed, guess mode.

    Parts a test (or a browser) can drive: ``prompt_box`` (Text, "prompt"), ``target_slider``
    ("condition image", an index into ``targets``), ``kind_buttons`` (ToggleButtons over
    CONDITION_KINDS), ``scale_slider`` ("control scale"), ``seed_slider`` ("seed"),
    ``guess_checkbox`` ("guess mode (no prompt)"), ``readout`` (HTML) and ``output``. ``render()``
    redraws; ``renders`` counts the redraws, ``samplings`` the settings sampled; ``png`` holds the
    picture on show and ``samples`` the ``ControlSamples`` behind it. A setting seen before is
    drawn from a cache.
    """

    def __init__(self, unet, vae, clip, schedule, controlnet, targets: _data.ShapesBatch,
                 prompt: str = DEFAULT_PROMPT, *, kind: str = "edges", scale: float = 1.0, n: int = 4,
                 steps: int = CONTROL_STEPS, guidance_scale: float = 3.0, seed: int = 0, max_scale: float = 2.0,
                 max_seed: int = MAX_SEED):
        _check_parts(unet, vae, clip, schedule)
        _check_controlnet(controlnet, unet)
        self.targets = _check_targets(targets)
        kind = _check_kind(kind)
        max_scale = _check_scale(max_scale, "max_scale")
        if not 0 <= _check_scale(scale, "scale") <= max_scale:
            raise ValueError(f"scale must lie in [0, max_scale={max_scale:g}], got {scale}")
        max_seed = _check_int_arg("max_seed", max_seed, 0)
        seed = _check_int_arg("seed", seed, 0, max_seed)
        self.n = _check_int_arg("n", n, 1)
        self.steps = _check_int_arg("steps", steps, 1, schedule.T)
        self.guidance_scale = _check_scale(guidance_scale, "guidance_scale")
        self.parts = (unet, vae, clip, schedule, controlnet)
        self.renders = 0
        self.png = b""
        self._cache = SettingsCache(CACHE_SIZE)

        self.prompt_box = ipywidgets.Text(value=prompt, description="prompt", continuous_update=False,
                                          layout=ipywidgets.Layout(width="70%"))
        self.target_slider = ipywidgets.IntSlider(value=0, min=0, max=len(self.targets) - 1,
                                                  description="condition image", continuous_update=False,
                                                  style={"description_width": "initial"})
        self.kind_buttons = ipywidgets.ToggleButtons(options=CONDITION_KINDS, value=kind, description="condition")
        self.scale_slider = ipywidgets.FloatSlider(value=scale, min=0.0, max=max_scale, step=0.1,
                                                   description="control scale", readout_format=".1f",
                                                   continuous_update=False, style={"description_width": "initial"})
        self.seed_slider = ipywidgets.IntSlider(value=seed, min=0, max=max_seed, description="seed",
                                                continuous_update=False)
        self.guess_checkbox = ipywidgets.Checkbox(value=False, description="guess mode (no prompt)")
        self.readout = ipywidgets.HTML()
        self.output = ipywidgets.Output()
        for control in (self.prompt_box, self.target_slider, self.kind_buttons, self.scale_slider, self.seed_slider,
                        self.guess_checkbox):
            control.observe(self._changed, names="value")
        super().__init__([self.prompt_box, ipywidgets.HBox([self.target_slider, self.kind_buttons]),
                          ipywidgets.HBox([self.scale_slider, self.seed_slider, self.guess_checkbox]),
                          self.readout, self.output])
        self.render()

    @property
    def samples(self) -> ControlSamples:
        """The samples of the current settings: from the cache, else sampled now."""
        key = (self.prompt_box.value, self.target_slider.value, self.kind_buttons.value, self.scale_slider.value,
               self.seed_slider.value, self.guess_checkbox.value)
        prompt, index, kind, scale, seed, guess = key
        return self._cache.get(key, lambda: control_samples(*self.parts, self.targets[index], prompt, kind=kind,
                                                            scale=scale, guess_mode=guess, n=self.n,
                                                            steps=self.steps, guidance_scale=self.guidance_scale,
                                                            seed=seed))

    @property
    def samplings(self) -> int:
        """How many settings were sampled (not found in the cache) so far."""
        return self._cache.misses

    def figure(self) -> Figure:
        """The figure for the current settings (what ``render`` shows)."""
        return samples_figure(self.samples)

    def render(self) -> None:
        """Redraw (sampling first if the setting is new) and update the readout."""
        samples = self.samples
        self.png = figure_png(self.figure(), dpi=CONTROL_DPI)
        _show_png(self.output, self.png, f"<control figure: {samples.kind}, scale {samples.scale:g}>")
        colour = "" if samples.colour is None else f", in the prompt's colour: {samples.colour.mean():.0%}"
        self.readout.value = (f"condition <b>{samples.kind}</b>, control scale <b>{samples.scale:g}</b>"
                              f"{' (guess mode)' if samples.guess_mode else ''}: mean IoU with the target "
                              f"<b>{samples.iou.mean():.2f}</b>{colour}; {len(samples.images)} samples in "
                              f"{samples.seconds:.2f} s ({self.samplings} settings sampled so far)")
        self.renders += 1

    def _changed(self, change) -> None:
        self.render()


def control_explorer(unet, vae, clip, schedule, controlnet, targets: _data.ShapesBatch,
                     prompt: str = DEFAULT_PROMPT, *, kind: str = "edges", scale: float = 1.0, n: int = 4,
                     steps: int = CONTROL_STEPS, guidance_scale: float = 3.0, seed: int = 0, max_scale: float = 2.0,
                     max_seed: int = MAX_SEED) -> ControlExplorer:
    """An interactive control explorer for a ControlNet on a text-to-image LDM (e.g.
    ``recipes.shapes_ldm_parts()`` and ``pretrained.load("shapes-controlnet-edges")``): pick a
    condition image from ``targets`` and its kind (edges / mask / scribble / none), drag the
    control scale, change the seed, try guess mode; ``n`` samples, each with its IoU against the
    target mask. ``control_figure`` draws several scales statically."""
    return ControlExplorer(unet, vae, clip, schedule, controlnet, targets, prompt, kind=kind, scale=scale, n=n,
                           steps=steps, guidance_scale=guidance_scale, seed=seed, max_scale=max_scale,
                           max_seed=max_seed)
