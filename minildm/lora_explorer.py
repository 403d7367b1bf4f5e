"""The LoRA explorer (lesson 13): turn an adapter up and down, and compare adapters of several ranks.

A LoRA layer computes h = W x + b + s (alpha / r) B A x (Hu et al. 2021), where the multiplier s
is the "LoRA scale" of diffusers (``cross_attention_kwargs={"scale": s}``) and ``lora.set_scale``:
s = 0 is the pretrained model, s = 1 the adapter as trained, s > 1 exaggerates what it learned.
The explorer samples one prompt from an adapted text-to-image LDM with the same initial noise
(a fixed seed), so only the knob changes the picture: the scale s from 0 to 1.5, and the rank r,
choosing among adapters of several ranks trained on the same data (a dict rank -> adapted U-Net).
Each panel carries what the shapes judge (``minildm.judge``) reads in it.

``lora_sample`` draws one such sample; ``lora_figure`` is the static picture (rows: ranks,
columns: scales) for the book and CI; ``LoRAExplorer`` is the widget, which keeps every sample
it has drawn, so going back to a setting seen before costs nothing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

import ipywidgets
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from . import judge as _judge
from . import ldm as _ldm
from . import lora as _lora
from .denoise_explorer import _check_parts
from .widgets import MAX_SEED, SettingsCache, _check_int_arg, _check_scale, _show, _show_png, figure_png

__all__ = ["lora_sample", "judge_reading", "lora_figure", "LoRAExplorer", "lora_explorer"]

LORA_STEPS = 20  # DDIM steps per sample: a fraction of a second for shapes-ldm on a CPU
LORA_DPI = 100
MAX_LORA_SCALE = 1.5
FIGURE_SCALES = (0.0, 0.25, 0.5, 1.0, 1.5)
CACHE_SIZE = 64  # samples kept by an explorer
DEFAULT_PROMPT = "a large red star in the center on black"


def _check_adapters(adapters) -> dict[int, nn.Module]:
    """``adapters`` as {rank: U-Net with unmerged LoRA layers of that rank}; one adapted U-Net is {its rank: it}."""
    if isinstance(adapters, nn.Module):
        ranks = {m.r for m in adapters.modules() if isinstance(m, _lora.LoRALinear)}
        if not ranks:
            raise ValueError("the U-Net has no LoRA layers: inject (and train) an adapter with minildm.lora.inject "
                             "first")
        adapters = {min(ranks): adapters}
    if not isinstance(adapters, Mapping) or not adapters:
        raise TypeError(f"adapters must be an adapted U-Net or a non-empty dict rank -> adapted U-Net, "
                        f"got {type(adapters).__name__}")
    checked = {}
    for rank, model in adapters.items():
        if not isinstance(model, nn.Module):
            raise TypeError(f"adapters[{rank!r}] must be a U-Net with LoRA layers, got {type(model).__name__}")
        layers = [m for m in model.modules() if isinstance(m, _lora.LoRALinear)]
        if not layers:
            raise ValueError(f"adapters[{rank!r}] has no LoRA layers: inject (and train) an adapter with "
                             f"minildm.lora.inject first")
        if any(layer.merged for layer in layers):
            raise ValueError(f"adapters[{rank!r}] is merged: its scale cannot change; call minildm.lora.unmerge first")
        if {layer.r for layer in layers} != {rank}:
            raise ValueError(f"adapters[{rank!r}] has LoRA layers of rank {sorted({layer.r for layer in layers})}, "
                             f"not {rank!r}: key the dict by each adapter's rank")
        checked[rank] = model
    return dict(sorted(checked.items()))


def _multiplier(model: nn.Module) -> float:
    """The LoRA scale s the model's layers have now (scaling = s alpha / r)."""
    layer = next(m for m in model.modules() if isinstance(m, _lora.LoRALinear))
    return layer.scaling * layer.r / layer.alpha


@torch.no_grad()
def lora_sample(unet: nn.Module, vae, clip, schedule, prompt: str, scale: float, *, steps: int = LORA_STEPS,
                guidance_scale: float = 3.0, seed: int = 0) -> Tensor:
    """One sample (3, H, W) in [-1, 1] of ``prompt`` with every LoRA layer of ``unet`` at scale ``scale``
    (``ldm.sample``: DDIM, eta 0, initial noise seeded ``seed``); the layers' scale is put back after."""
    if not isinstance(unet, nn.Module):
        raise TypeError(f"unet must be one U-Net with LoRA layers, got {type(unet).__name__}")
    _check_adapters(unet)
    _check_parts(unet, vae, clip, schedule)
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r:.80}")
    scale = _check_scale(scale, "scale")
    steps = _check_int_arg("steps", steps, 1, schedule.T)
    guidance_scale = _check_scale(guidance_scale, "guidance_scale")
    seed = _check_int_arg("seed", seed, 0)
    before = _multiplier(unet)
    _lora.set_scale(unet, scale)
    try:
        return _ldm.sample(unet, vae, clip, schedule, [prompt], steps=steps, guidance_scale=guidance_scale,
                           seed=seed)[0]
    finally:
        _lora.set_scale(unet, before)


def judge_reading(image: Tensor) -> str:
    """What the shapes judge sees in one image (3, H, W): e.g. "large red star, center" or "nothing"."""
    scene = _judge.read(image[None])[0]
    if not scene["objects"]:
        return "nothing"
    return "; ".join(f"{o['size']} {o['colour']} {o['shape']}, {o['position']}" for o in scene["objects"])


def _image_axes(ax, image: Tensor, title: str) -> None:
    _show(ax, image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def lora_figure(adapters, vae, clip, schedule, prompt: str = DEFAULT_PROMPT, scales: Sequence[float] = FIGURE_SCALES,
                *, steps: int = LORA_STEPS, guidance_scale: float = 3.0, seed: int = 0) -> Figure:
    """The LoRA explorer as a static picture: one row per adapter (rank r), one column per LoRA scale
    s, every panel ``lora_sample`` of ``prompt`` with the same seed, titled with s and the judge's
    reading. ``adapters``: an adapted U-Net, or a dict rank -> adapted U-Net."""
    adapters = _check_adapters(adapters)
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise ValueError(f"scales must be a non-empty list of LoRA scales, got {scales!r:.80}")
    scales = [_check_scale(s, "scales") for s in scales]
    cell = 1.6
    fig = Figure(figsize=(1.0 + cell * len(scales), 0.9 + (cell + 0.35) * len(adapters)))
    axes = fig.subplots(len(adapters), len(scales), squeeze=False)
    for row, (rank, unet) in enumerate(adapters.items()):
        for col, s in enumerate(scales):
            image = lora_sample(unet, vae, clip, schedule, prompt, s, steps=steps, guidance_scale=guidance_scale,
                                seed=seed)
            _image_axes(axes[row, col], image, f"scale {s:g}\n" + textwrap.fill(judge_reading(image), 22))
        axes[row, 0].set_ylabel(f"rank r = {rank}", fontsize=9)
    fig.suptitle(f"LoRA scale (columns) and rank (rows): {prompt!r}\nDDIM {steps} steps, guidance scale "
                 f"{guidance_scale:g}, seed {seed}; titles: what the judge reads", fontsize=9)
    fig.subplots_adjust(left=0.9 / (1.0 + cell * len(scales)), right=0.98, bottom=0.03, top=0.8, hspace=0.6,
                        wspace=0.1)
    return fig


class LoRAExplorer(ipywidgets.VBox):
    """The LoRA explorer: a prompt box, LoRA scale and seed sliders, a rank choice, a readout, the picture.

    Parts a test (or a browser) can drive: ``prompt_box`` (Text, description "prompt"),
    ``scale_slider`` ("LoRA scale", 0 to ``max_scale``), ``rank_buttons`` (ToggleButtons, "rank",
    one option per adapter), ``seed_slider`` ("seed"), ``readout`` (HTML) and ``output``. The
    picture shows the base model (scale 0) beside the chosen adapter at the chosen scale, the same
    seed in both. ``render()`` redraws; ``renders`` counts the redraws, ``samplings`` the samples
    drawn (a setting seen before comes from the cache), ``png`` holds the picture on show.
    """

    def __init__(self, adapters, vae, clip, schedule, prompt: str = DEFAULT_PROMPT, *, scale: float = 1.0,
                 rank: int | None = None, steps: int = LORA_STEPS, guidance_scale: float = 3.0, seed: int = 0,
                 max_scale: float = MAX_LORA_SCALE, max_seed: int = MAX_SEED):
        self.adapters = _check_adapters(adapters)
        for model in self.adapters.values():
            _check_parts(model, vae, clip, schedule)
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r:.80}")
        max_scale = _check_scale(max_scale, "max_scale")
        if not 0 <= _check_scale(scale, "scale") <= max_scale:
            raise ValueError(f"scale must lie in [0, max_scale={max_scale:g}], got {scale}")
        rank = next(iter(self.adapters)) if rank is None else rank
        if rank not in self.adapters:
            raise ValueError(f"rank must be one of the adapters' ranks {list(self.adapters)}, got {rank!r}")
        self.steps = _check_int_arg("steps", steps, 1, schedule.T)
        self.guidance_scale = _check_scale(guidance_scale, "guidance_scale")
        seed = _check_int_arg("seed", seed, 0, _check_int_arg("max_seed", max_seed, 0))
        self.parts = (vae, clip, schedule)
        self.renders = 0
        self.png = b""
        self._cache = SettingsCache(CACHE_SIZE)

        self.prompt_box = ipywidgets.Text(value=prompt, description="prompt", continuous_update=False,
                                          layout=ipywidgets.Layout(width="60%"))
        self.scale_slider = ipywidgets.FloatSlider(value=scale, min=0.0, max=max_scale, step=0.1,
                                                   description="LoRA scale", readout_format=".1f",
                                                   continuous_update=False, style={"description_width": "initial"})
        self.rank_buttons = ipywidgets.ToggleButtons(options=list(self.adapters), value=rank, description="rank",
                                                     style={"button_width": "3.5em"})
        self.seed_slider = ipywidgets.IntSlider(value=seed, min=0, max=max_seed, description="seed",
                                                continuous_update=False)
        self.readout = ipywidgets.HTML()
        self.output = ipywidgets.Output()
        for control in (self.prompt_box, self.scale_slider, self.rank_buttons, self.seed_slider):
            control.observe(self._changed, names="value")
        super().__init__([self.prompt_box, ipywidgets.HBox([self.scale_slider, self.seed_slider]), self.rank_buttons,
                          self.readout, self.output])
        self.render()

    def sample(self, scale: float | None = None) -> Tensor:
        """The sample (3, H, W) for the current prompt, rank and seed at ``scale`` (the slider's if None)."""
        scale = self.scale_slider.value if scale is None else scale
        rank = self.rank_buttons.value
        # the base model (scale 0) is the same whatever the rank
        key = (self.prompt_box.value, rank if scale != 0 else None, float(scale), self.seed_slider.value)
        return self._cache.get(key, lambda: lora_sample(self.adapters[rank], *self.parts, self.prompt_box.value,
                                                        scale, steps=self.steps, guidance_scale=self.guidance_scale,
                                                        seed=self.seed_slider.value))

    @property
    def samplings(self) -> int:
        """How many settings were sampled (not found in the cache) so far."""
        return self._cache.misses

    def figure(self) -> Figure:
        """Two panels, the base model (LoRA scale 0) and the adapter at the current rank and scale."""
        fig = Figure(figsize=(5.2, 3.3))
        axes = fig.subplots(1, 2)
        rank, scale = self.rank_buttons.value, self.scale_slider.value
        for ax, s, name in ((axes[0], 0.0, "base model (scale 0)"), (axes[1], scale, f"rank {rank}, scale {scale:g}")):
            image = self.sample(s)
            _image_axes(ax, image, f"{name}\njudge: " + textwrap.fill(judge_reading(image), 26))
        fig.suptitle(textwrap.fill(repr(self.prompt_box.value), 60), fontsize=9)
        fig.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.72, wspace=0.15)
        return fig

    def render(self) -> None:
        """Redraw for the current settings (sampling what is not cached yet); update the readout."""
        self.png = figure_png(self.figure(), dpi=LORA_DPI)
        rank, scale = self.rank_buttons.value, self.scale_slider.value
        _show_png(self.output, self.png, f"<LoRA figure: rank {rank}, scale {scale:g}, {self.prompt_box.value!r}>")
        layer = next(m for m in self.adapters[rank].modules() if isinstance(m, _lora.LoRALinear))
        trainable, total = _lora.count_parameters(self.adapters[rank])
        self.readout.value = (f"rank <b>{rank}</b> (alpha {layer.alpha:g}): each LoRA layer adds "
                              f"{scale:g} x {layer.alpha:g}/{rank} B A = {scale * layer.alpha / rank:.3g} B A to W; "
                              f"{trainable:,} trainable parameters ({trainable / total:.2%} of {total:,}); "
                              f"seed {self.seed_slider.value}, {self.samplings} samples drawn so far")
        self.renders += 1

    def _changed(self, change) -> None:
        self.render()


def lora_explorer(adapters, vae, clip, schedule, prompt: str = DEFAULT_PROMPT, *, scale: float = 1.0,
                  rank: int | None = None, steps: int = LORA_STEPS, guidance_scale: float = 3.0, seed: int = 0,
                  max_scale: float = MAX_LORA_SCALE, max_seed: int = MAX_SEED) -> LoRAExplorer:
    """An interactive LoRA explorer for adapted text-to-image LDM U-Nets (``adapters``: one adapted U-Net,
    or a dict rank -> adapted U-Net, with ``vae``, ``clip`` and ``schedule`` from ``recipes.shapes_ldm_parts``):
    slide the LoRA scale from 0 (the base model) to ``max_scale``, pick a rank, change the prompt and seed.
    ``lora_figure`` draws a grid of ranks x scales statically."""
    return LoRAExplorer(adapters, vae, clip, schedule, prompt, scale=scale, rank=rank, steps=steps,
                        guidance_scale=guidance_scale, seed=seed, max_scale=max_scale, max_seed=max_seed)
