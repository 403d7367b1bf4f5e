"""The denoise explorer (lesson 12): watch a text-to-image latent diffusion model denoise two prompts.

Lee et al. (2023)'s Diffusion Explainer shows Stable Diffusion turning noise into a picture
step by step, two prompts side by side, from trajectories computed in advance. This explorer
shows the same thing live, on the learner's own model: it samples the whole DDIM trajectory
once per (prompts, guidance scale, seed) with ``ldm.sample(..., callback=...)``, decodes every
latent along the way and keeps the result, so dragging the step scrubber only redraws. At
step i, with t = ts[i], the picture shows

    x_t     = D(z_t / s)                                     the noisy latent the step starts from, decoded
    x0_hat  = D(z0_hat / s),  z0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
                                                             the model's guess of the clean latent, decoded

where eps_hat = eps("") + w (eps(c) - eps("")) is classifier-free guidance with scale w
(Ho & Salimans 2022; w = 1 is the conditional model alone, w = 0 the unconditional one) and
s is the autoencoder's latent scale factor (Rombach et al. 2022). Early on x0_hat is a blurry
average of everything the prompt allows; the layout settles within the first few steps and
the details last, while x_t only gets clean at the very end.

``denoise_trajectory`` samples and decodes one trajectory; ``trajectory_figure`` (what
``denoise_figure`` returns) draws it as a static grid for the book and CI; ``step_figure`` is
the one step the explorer shows. The explorer reuses the rendering helpers of
``minildm.widgets``, which re-exports it.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass

import ipywidgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from . import ldm as _ldm
from . import samplers as _samplers
from .autoencoders import Autoencoder
from .schedules import NoiseSchedule
from .text import MiniCLIP
from .widgets import MAX_SEED, SettingsCache, _check_int_arg, _check_scale, _show, _show_png, figure_png

__all__ = ["DenoiseTrajectory", "denoise_trajectory", "step_figure", "trajectory_figure", "denoise_figure",
           "DenoiseExplorer", "denoise_explorer"]

DENOISE_STEPS = 20  # DDIM steps: two prompts with guidance in well under a second for shapes-ldm on a CPU
DENOISE_DPI = 100
FIGURE_COLUMNS = 5  # steps shown by the static figure
CACHE_SIZE = 16  # trajectories kept by an explorer: going back to a setting seen before costs nothing
PROMPT_WIDTH = 26  # characters per line of a prompt in a panel title
DEFAULT_PROMPTS = ("a large red circle in the center on black", "a large blue square in the center on white")


@dataclass(frozen=True)
class DenoiseTrajectory:
    """One sampled DDIM trajectory of P prompts, every latent decoded.

    ``ts`` (steps,) the timesteps, descending; ``alpha_bar`` their abar_t; ``x_t`` and ``x0_hat``
    (steps, P, 3, H, W) in [-1, 1]: step i's input z_t and the model's z0_hat from it, decoded;
    ``images`` (P, 3, H, W) the samples ``ldm.sample`` returns; ``seconds`` the sampling time.
    """

    prompts: tuple[str, ...]
    guidance_scale: float
    seed: int
    ts: tuple[int, ...]
    alpha_bar: tuple[float, ...]
    x_t: Tensor
    x0_hat: Tensor
    images: Tensor
    seconds: float

    @property
    def steps(self) -> int:
        return len(self.ts)


def _check_parts(unet, vae, clip, schedule) -> None:
    """The four parts of a text-to-image LDM, and that they fit together."""
    if not isinstance(unet, nn.Module):
        raise TypeError(f"unet must be the LDM's eps-model (a torch.nn.Module), got {type(unet).__name__}")
    if not isinstance(vae, Autoencoder):
        raise TypeError(f"vae must be a minildm.autoencoders.Autoencoder (e.g. shapes-vae), got {type(vae).__name__}")
    if not isinstance(clip, MiniCLIP):
        raise TypeError(f"clip must be a minildm.text.MiniCLIP (e.g. shapes-clip), got {type(clip).__name__}")
    if not isinstance(schedule, NoiseSchedule):
        raise TypeError(f"schedule must be the NoiseSchedule the U-Net was trained with, got {type(schedule).__name__}")
    in_channels = getattr(unet, "in_channels", vae.latent_channels)
    if in_channels != vae.latent_channels:
        raise ValueError(f"unet reads {in_channels} input channels but vae's latents have {vae.latent_channels}: "
                         f"a U-Net conditioned by concatenation needs its condition, which the explorer does not give")
    width = clip.text_model.config.hidden_size
    context_dim = getattr(unet, "context_dim", width)
    if context_dim != width:
        raise ValueError(f"unet cross-attends to context_dim={context_dim} features but clip's text width is {width}")


def _check_prompts(prompts) -> tuple[str, str]:
    if (isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) != 2
            or not all(isinstance(p, str) for p in prompts)):
        raise ValueError(f"prompts must be two strings (p1, p2), shown side by side; got {prompts!r:.80}")
    return tuple(prompts)


def _check_steps(steps, schedule: NoiseSchedule) -> int:
    return _check_int_arg("steps", steps, 1, schedule.T)


@torch.no_grad()
def denoise_trajectory(unet, vae, clip, schedule, prompts: Sequence[str], *, steps: int = DENOISE_STEPS,
                       guidance_scale: float = 3.0, seed: int = 0) -> DenoiseTrajectory:
    """Sample ``prompts`` with ``ldm.sample`` (DDIM, eta 0, ``steps`` steps, guidance scale w, initial
    noise seeded ``seed``) and decode z_t and z0_hat at every step. Put the U-Net in eval mode first."""
    _check_parts(unet, vae, clip, schedule)
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r:.80}")
    steps = _check_steps(steps, schedule)
    guidance_scale = _check_scale(guidance_scale, "guidance_scale")
    seed = _check_int_arg("seed", seed, 0)
    recorder = _samplers.Trajectory()
    start = time.perf_counter()
    images = _ldm.sample(unet, vae, clip, schedule, list(prompts), steps=steps, guidance_scale=guidance_scale,
                         seed=seed, callback=recorder)  # (P, 3, H, W)
    z_t, z0_hat = recorder.stacked()  # (steps, P, c, h, w) each
    # x = D(z / s) for every latent of the trajectory, in one batch
    decoded = _ldm.decode(vae, torch.cat([z_t, z0_hat]).flatten(0, 1)).cpu()  # (2 steps P, 3, H, W)
    x_t, x0_hat = decoded.view(2, steps, len(prompts), *decoded.shape[1:])  # (steps, P, 3, H, W) each
    alpha_bar = schedule.alpha_bar[torch.tensor(recorder.ts)]  # (steps,)
    return DenoiseTrajectory(tuple(prompts), guidance_scale, seed, tuple(recorder.ts), tuple(alpha_bar.tolist()),
                             x_t, x0_hat, images, time.perf_counter() - start)


def _image_axes(ax, image: Tensor, title: str | None = None) -> None:
    _show(ax, image)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=8)


def _prompt_title(k: int, prompt: str) -> str:
    return f"prompt {k + 1}: " + textwrap.fill(repr(prompt), PROMPT_WIDTH)


def step_figure(trajectory: DenoiseTrajectory, step: int) -> Figure:
    """The explorer's picture of step ``step`` (0-indexed) for two prompts: x_t above x0_hat, one
    column per prompt (axes 0-3: x_t 1, x_t 2, x0_hat 1, x0_hat 2), and on the right the signal
    sqrt(abar_t) and noise sqrt(1 - abar_t) over the steps with this step marked."""
    if not isinstance(trajectory, DenoiseTrajectory):
        raise TypeError(f"trajectory must be a DenoiseTrajectory (from denoise_trajectory), got "
                        f"{type(trajectory).__name__}")
    step = _check_int_arg("step", step, 0, trajectory.steps - 1)
    P = len(trajectory.prompts)
    t, abar = trajectory.ts[step], trajectory.alpha_bar[step]
    fig = Figure(figsize=(2.3 * P + 3.6, 5.2))  # fixed margins: a layout engine would double the drawing time
    grid = fig.add_gridspec(2, P + 1, width_ratios=[1] * P + [1.4], left=0.06, right=0.97, top=0.8, bottom=0.1,
                            wspace=0.3, hspace=0.15)
    rows = ((trajectory.x_t, f"$x_t$, t = {t}"), (trajectory.x0_hat, r"$\hat x_0$ from $x_t$"))
    for r, (images, label) in enumerate(rows):
        for k in range(P):
            ax = fig.add_subplot(grid[r, k])
            _image_axes(ax, images[step, k], _prompt_title(k, trajectory.prompts[k]) if r == 0 else None)
            if k == 0:
                ax.set_ylabel(label, fontsize=10)
    curve = fig.add_subplot(grid[:, P])
    index = np.arange(1, trajectory.steps + 1)
    signal = np.sqrt(np.array(trajectory.alpha_bar))
    curve.plot(index, signal, color="C0", label=r"signal $\sqrt{\bar\alpha_t}$")
    curve.plot(index, np.sqrt(1 - signal ** 2), color="C1", label=r"noise $\sqrt{1-\bar\alpha_t}$")
    curve.axvline(step + 1, color="red", lw=0.8)
    curve.plot([step + 1, step + 1], [abar ** 0.5, (1 - abar) ** 0.5], "o", color="red")
    curve.set(xlabel="DDIM step", ylabel=r"coefficient in $z_t$", ylim=(-0.02, 1.02),
              xlim=(0.5, trajectory.steps + 0.5), title="where this step is")
    curve.legend(fontsize=7, loc="center right")
    fig.suptitle(f"step {step + 1} of {trajectory.steps}, t = {t}:  guidance scale {trajectory.guidance_scale:g}, "
                 f"seed {trajectory.seed}", fontsize=11, y=0.99, va="top")
    return fig


def _shown_steps(steps: int, columns: int) -> list[int]:
    """``columns`` step indices spread evenly from the first step to the last, both included."""
    return sorted({round(float(i)) for i in np.linspace(0, steps - 1, columns)})


def trajectory_figure(trajectory: DenoiseTrajectory, columns: int = FIGURE_COLUMNS) -> Figure:
    """A static grid: for each prompt a row of x_t and a row of x0_hat (decoded), at ``columns`` steps
    from the first to the last (axes row by row: prompt 1 x_t, prompt 1 x0_hat, prompt 2 x_t, ...)."""
    if not isinstance(trajectory, DenoiseTrajectory):
        raise TypeError(f"trajectory must be a DenoiseTrajectory (from denoise_trajectory), got "
                        f"{type(trajectory).__name__}")
    shown = _shown_steps(trajectory.steps, _check_int_arg("columns", columns, 1, trajectory.steps))
    P = len(trajectory.prompts)
    cell, left, top = 1.25, 1.1, 0.75 + 0.16 * P
    fig = Figure(figsize=(left + cell * len(shown) + 0.1, top + 2 * P * cell + 0.1))
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - 0.1 / width, top=1 - top / height, bottom=0.1 / height,
                        wspace=0.06, hspace=0.22)
    axes = fig.subplots(2 * P, len(shown), squeeze=False)
    for k in range(P):
        for r, (images, label) in enumerate(((trajectory.x_t, "$x_t$"), (trajectory.x0_hat, r"$\hat x_0$"))):
            for c, i in enumerate(shown):
                title = f"step {i + 1}, t = {trajectory.ts[i]}" if k == 0 and r == 0 else None
                _image_axes(axes[2 * k + r, c], images[i, k], title)
            axes[2 * k + r, 0].set_ylabel(f"prompt {k + 1}\n{label}", fontsize=9)
    prompts = "\n".join(f"prompt {k + 1}: {p!r}" for k, p in enumerate(trajectory.prompts))
    fig.suptitle(f"Denoising, DDIM {trajectory.steps} steps, guidance scale {trajectory.guidance_scale:g}, "
                 f"seed {trajectory.seed}\n{prompts}", fontsize=9, y=1 - 0.05 / height, va="top")
    return fig


def denoise_figure(unet, vae, clip, schedule, prompts: Sequence[str] = DEFAULT_PROMPTS,
                   *, steps: int = DENOISE_STEPS, guidance_scale: float = 3.0, seed: int = 0,
                   columns: int = FIGURE_COLUMNS) -> Figure:
    """The denoise explorer as a static picture: rows are the two prompts x (x_t, x0_hat), columns
    ``columns`` steps of one trajectory (``denoise_trajectory`` with these arguments)."""
    prompts = _check_prompts(prompts)
    return trajectory_figure(denoise_trajectory(unet, vae, clip, schedule, prompts, steps=steps,
                                                guidance_scale=guidance_scale, seed=seed), columns)


class DenoiseExplorer(ipywidgets.VBox):
    """The denoise explorer: two prompt boxes, a step scrubber, guidance and seed sliders, a readout, the picture.

    Parts a test (or a browser) can drive: ``prompt_boxes`` (two Text boxes, descriptions
    "prompt 1" and "prompt 2"), ``step_slider`` (description "step", 0-indexed DDIM steps),
    ``scale_slider`` ("guidance scale"), ``seed_slider`` ("seed"), ``readout`` (an HTML line) and
    ``output``. ``render()`` redraws; ``renders`` counts the redraws, ``samplings`` the
    trajectories sampled, ``png`` holds the picture on show and ``trajectory`` the
    ``DenoiseTrajectory`` behind it. Every control redraws once; only the prompts, the guidance
    scale and the seed sample a new trajectory, and only for a setting not seen before.
    """

    def __init__(self, unet, vae, clip, schedule, prompts, *, steps: int = DENOISE_STEPS,
                 guidance_scale: float = 3.0, seed: int = 0, step: int | None = None, max_scale: float = 10.0,
                 max_seed: int = MAX_SEED):
        _check_parts(unet, vae, clip, schedule)
        prompts = _check_prompts(prompts)
        self.steps = _check_steps(steps, schedule)
        step = self.steps // 2 if step is None else _check_int_arg("step", step, 0, self.steps - 1)
        max_scale = _check_scale(max_scale, "max_scale")
        if not 0 <= _check_scale(guidance_scale, "guidance_scale") <= max_scale:
            raise ValueError(f"guidance_scale must lie in [0, max_scale={max_scale:g}], got {guidance_scale}")
        max_seed = _check_int_arg("max_seed", max_seed, 0)
        seed = _check_int_arg("seed", seed, 0, max_seed)
        self.parts = (unet, vae, clip, schedule)
        self.renders = 0
        self.png = b""
        self._cache = SettingsCache(CACHE_SIZE)

        self.prompt_boxes = [ipywidgets.Text(value=p, description=f"prompt {k + 1}", continuous_update=False,
                                             layout=ipywidgets.Layout(width="48%"))
                             for k, p in enumerate(prompts)]
        self.step_slider = ipywidgets.IntSlider(value=step, min=0, max=self.steps - 1, description="step",
                                                layout=ipywidgets.Layout(width="50%"))
        self.scale_slider = ipywidgets.FloatSlider(value=guidance_scale, min=0.0, max=max_scale, step=0.5,
                                                   description="guidance scale", readout_format=".1f",
                                                   continuous_update=False, style={"description_width": "initial"})
        self.seed_slider = ipywidgets.IntSlider(value=seed, min=0, max=max_seed, description="seed",
                                                continuous_update=False)
        self.readout = ipywidgets.HTML()
        self.output = ipywidgets.Output()
        for control in (*self.prompt_boxes, self.step_slider, self.scale_slider, self.seed_slider):
            control.observe(self._changed, names="value")
        super().__init__([ipywidgets.HBox(self.prompt_boxes), self.step_slider,
                          ipywidgets.HBox([self.scale_slider, self.seed_slider]), self.readout, self.output])
        self.render()

    @property
    def prompts(self) -> tuple[str, str]:
        return tuple(box.value for box in self.prompt_boxes)

    @property
    def trajectory(self) -> DenoiseTrajectory:
        """The trajectory of the current prompts, guidance scale and seed: from the cache, else sampled now."""
        key = (self.prompts, self.scale_slider.value, self.seed_slider.value)
        return self._cache.get(key, lambda: denoise_trajectory(*self.parts, self.prompts, steps=self.steps,
                                                               guidance_scale=key[1], seed=key[2]))

    @property
    def samplings(self) -> int:
        """How many settings were sampled (not found in the cache) so far."""
        return self._cache.misses

    def figure(self) -> Figure:
        """The figure for the current settings (what ``render`` shows)."""
        return step_figure(self.trajectory, self.step_slider.value)

    def render(self) -> None:
        """Redraw the current step (sampling first if the prompts, scale or seed are new); update the readout."""
        trajectory, i = self.trajectory, self.step_slider.value
        self.png = figure_png(self.figure(), dpi=DENOISE_DPI)
        _show_png(self.output, self.png, f"<denoise figure: step {i + 1} of {trajectory.steps}, "
                                         f"prompts {trajectory.prompts}>")
        abar = trajectory.alpha_bar[i]
        self.readout.value = (f"step <b>{i + 1}</b> of {trajectory.steps}: t = {trajectory.ts[i]}, "
                              f"noise level z_t = {abar ** 0.5:.2f} z_0 + {(1 - abar) ** 0.5:.2f} eps; guidance scale "
                              f"{trajectory.guidance_scale:g}, seed {trajectory.seed}; trajectory sampled in "
                              f"{trajectory.seconds:.2f} s ({self.samplings} sampled so far)")
        self.renders += 1

    def _changed(self, change) -> None:
        self.render()


def denoise_explorer(unet, vae, clip, schedule, prompts: Sequence[str] = DEFAULT_PROMPTS,
                     *, steps: int = DENOISE_STEPS, guidance_scale: float = 3.0, seed: int = 0,
                     step: int | None = None, max_scale: float = 10.0, max_seed: int = MAX_SEED) -> DenoiseExplorer:
    """An interactive denoise explorer for a text-to-image LDM (e.g. ``recipes.shapes_ldm_parts()``):
    type two prompts, scrub through the ``steps`` DDIM steps and see x_t and x0_hat (decoded) for
    both, change the guidance scale (w = 1: conditional model alone) and the seed.
    ``denoise_figure`` draws several steps of the same trajectory statically."""
    return DenoiseExplorer(unet, vae, clip, schedule, prompts, steps=steps, guidance_scale=guidance_scale,
                           seed=seed, step=step, max_scale=max_scale, max_seed=max_seed)
