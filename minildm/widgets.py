"""Interactive explorers for the lessons, each with a static figure that is the same picture.

A slider teaches what a table of numbers cannot: drag t and watch an image drown in noise
while the marker slides down the alpha_bar and log-SNR curves. Every explorer here is an
ipywidgets container whose callback redraws one matplotlib figure and shows it as a PNG
inside an ``ipywidgets.Output``; the figure itself comes from a plain function
(``schedule_figure``) that the callback calls, so the static version in the book and CI and
the live version never drift apart.

schedule_explorer (lesson 02): the noise schedules of Ho et al. (2020, linear), Stable
Diffusion (scaled linear), Nichol & Dhariwal (2021, cosine) and GeoDiff (sigmoid), each
optionally rescaled to zero terminal SNR (Lin et al. 2023); the SNR view is Kingma et al. (2021).

guidance_explorer (lesson 07): classifier-free guidance (Ho & Salimans 2022) of a
class-conditional eps-model, eps = eps_u + s (eps_c - eps_u) with diffusers' guidance scale s
(Ho & Salimans' weight is w = s - 1). A grid of samples, one row per class, read by a
classifier: **agreement** (the fraction it labels as the class asked for) rises with s while
**diversity** (the mean distance between the classifier features of two samples of one class)
falls. ``guidance_figure`` draws several scales side by side.

denoise_explorer (lesson 12), lora_explorer (lesson 13) and control_explorer (lesson 14) live in
modules of those names (they need the LDM's parts, and import this module) and are re-exported here
lazily, so ``widgets.denoise_explorer`` works without a circular import.

Nothing else in the package imports this module.
"""

from __future__ import annotations

import base64
import importlib
import io
import math
import numbers
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ipywidgets
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from . import recipes as _recipes
from . import samplers as _samplers
from . import schedules as _schedules
from . import viz as _viz
from .classifier import Classifier

SCHEDULE_CHOICES = _schedules.SCHEDULES
# beta ranges each schedule is used with (cosine ignores them): DDPM's 1e-4 -> 0.02, and
# Stable Diffusion's 0.00085 -> 0.012 for scaled_linear
BETA_RANGES = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012),
               "cosine": (1e-4, 0.02), "sigmoid": (1e-4, 0.02)}
T_CHOICES = (50, 100, 250, 500, 1000, 2000)
NEIGHBOURS = 2  # noised images shown on each side of the chosen t
PNG_DPI = 72


def _check_image(image) -> Tensor:
    """One image as a float (C, H, W) CPU tensor, C in {1, 3}, from (C, H, W) or (1, C, H, W)."""
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor (C, H, W) in [-1, 1], got {type(image).__name__}")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (C, H, W) or (1, C, H, W) with C = 1 or 3, "
                         f"got {tuple(image.shape)}")
    return image.detach().to("cpu", torch.float32)


def _check_schedule(schedule, choices=SCHEDULE_CHOICES) -> str:
    if not isinstance(schedule, str) or schedule not in choices:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {list(choices)}")
    return schedule


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, numbers.Integral):
        raise TypeError(f"T must be an int number of steps, got {type(T).__name__}")
    if T < 2:
        raise ValueError(f"T must be at least 2 steps, got {T}")
    return int(T)


def _check_t(t, T: int) -> int:
    if t is None:
        return T // 2
    if isinstance(t, bool) or not isinstance(t, numbers.Integral):
        raise TypeError(f"t must be an int timestep, got {type(t).__name__}")
    if not 0 <= t < T:
        raise ValueError(f"t must lie in [0, {T - 1}] for T={T}, got {t}")
    return int(t)


def noise_schedule(schedule: str, T: int, zero_terminal_snr: bool = False) -> _schedules.NoiseSchedule:
    """The NoiseSchedule the explorer shows: ``schedule`` over T steps with its usual beta range."""
    beta_start, beta_end = BETA_RANGES[_check_schedule(schedule)]
    betas = _schedules.make_betas(schedule, _check_T(T), beta_start=beta_start, beta_end=beta_end)
    if zero_terminal_snr:
        betas = _schedules.rescale_zero_terminal_snr(betas)
    return _schedules.NoiseSchedule(betas)


def _show(ax, x: Tensor) -> None:
    """Draw one (C, H, W) image in [-1, 1] on ax; one channel in gray."""
    pixels = ((x.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # (H, W, C) in [0, 1]
    if pixels.shape[-1] == 1:
        ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(pixels)


def schedule_figure(image, schedule: str = "cosine", T: int = 1000, t: int | None = None, *, seed: int = 0,
                    zero_terminal_snr: bool = False) -> Figure:
    """One picture of a noise schedule at timestep t (default T // 2).

    Top row: the clean image x0 and x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at t and up to
    NEIGHBOURS steps of T // 20 on each side (one noise draw, seeded by ``seed``, for all of
    them; the panel at t is titled in red). Bottom row: alpha_bar_t and the log-SNR
    log(abar_t / (1 - abar_t)) over all t, with t marked. Returns a matplotlib Figure (not
    registered with pyplot: it shows as the last expression of a cell, or through ``figure_png``).
    """
    image = _check_image(image)
    schedule = _check_schedule(schedule)
    T = _check_T(T)
    t = _check_t(t, T)
    s = noise_schedule(schedule, T, zero_terminal_snr)
    step = max(1, T // 20)
    ts = [t + k * step for k in range(-NEIGHBOURS, NEIGHBOURS + 1) if 0 <= t + k * step < T]
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))  # (C, H, W)
    x_t = s.q_sample(image.expand(len(ts), *image.shape), torch.tensor(ts), noise.expand(len(ts), *image.shape))

    fig = Figure(figsize=(10, 5))  # fixed margins: a layout engine would double the drawing time
    top, bottom = fig.subfigures(2, 1, height_ratios=(1, 1.2))
    top.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.74, wspace=0.08)
    bottom.subplots_adjust(left=0.07, right=0.98, bottom=0.16, top=0.9, wspace=0.22)
    panels = 2 * NEIGHBOURS + 2
    for column, ax in enumerate(top.subplots(1, panels)):
        ax.set_xticks([])
        ax.set_yticks([])
        if column == 0:
            _show(ax, image)
            ax.set_title("x0 (clean)", fontsize=9)
        elif column - 1 < len(ts):
            _show(ax, x_t[column - 1])
            here = ts[column - 1] == t
            ax.set_title(f"t = {ts[column - 1]}", fontsize=9, color="red" if here else "black",
                         fontweight="bold" if here else "normal")
        else:
            ax.set_axis_off()

    steps = np.arange(T)
    alpha_bar = s.alpha_bar.numpy()
    # lambda_t = log(abar_t / (1 - abar_t)); -inf where abar_t = 0 is left out of the curve
    with np.errstate(divide="ignore"):
        log_snr = np.log(alpha_bar) - np.log1p(-alpha_bar)
    name = schedule + (", zero terminal SNR" if zero_terminal_snr else "")
    curves = ((r"$\bar\alpha_t$", "alpha_bar", alpha_bar), ("log-SNR", "log-SNR", log_snr))
    for ax, (label, title, values) in zip(bottom.subplots(1, 2), curves):
        finite = np.isfinite(values)
        ax.plot(steps[finite], values[finite], color="C0")
        ax.axvline(t, color="red", lw=0.8)
        if np.isfinite(values[t]):
            ax.plot([t], [values[t]], "o", color="red")
        ax.set_title(f"{title} ({name})", fontsize=10)
        ax.set_xlabel("timestep t")
        ax.set_ylabel(label)
        ax.set_xlim(0, T - 1)
    fig.suptitle(f"{name}, T = {T}, t = {t}:  alpha_bar = {alpha_bar[t]:.4f},  log-SNR = {log_snr[t]:.2f}",
                 fontsize=11, y=0.995, va="top")
    return fig


def figure_png(fig: Figure, dpi: int = PNG_DPI) -> bytes:
    """A Figure rendered to PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


class SettingsCache:
    """What an explorer computed for each setting it was moved to, the ``size`` most recent kept, so
    going back to a setting seen before costs nothing; ``misses`` counts the computations."""

    def __init__(self, size: int):
        self.size, self.misses = size, 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key, compute):
        """The value for ``key``: remembered, else ``compute()`` (and the oldest entry dropped if full)."""
        if key not in self._items:
            self._items[key] = compute()
            self.misses += 1
            if len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return self._items[key]


def _show_png(output: ipywidgets.Output, png: bytes, text: str) -> None:
    """Replace what ``output`` shows by one PNG (an <img> in the browser), ``text`` its plain-text form."""
    output.outputs = ({
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": text},
        "metadata": {},
    },)


class ScheduleExplorer(ipywidgets.VBox):
    """The schedule explorer: controls on top, the figure (a PNG) in ``output`` below.

    Parts a test can drive: ``schedule_dropdown``, ``T_dropdown``, ``t_slider``,
    ``zero_snr_checkbox``, ``output``; ``render()`` redraws; ``renders`` counts the redraws and
    ``png`` holds the bytes of the picture on show. Changing any control redraws once; a
    new T keeps t at the same fraction of the process.
    """

    def __init__(self, image, *, T: int = 1000, schedules=SCHEDULE_CHOICES, t: int | None = None,
                 seed: int = 0):
        if isinstance(schedules, str) or not isinstance(schedules, (list, tuple)) or not schedules:
            raise ValueError(f"schedules must be a non-empty list of names from {list(SCHEDULE_CHOICES)}, "
                             f"got {schedules!r}")
        for name in schedules:
            _check_schedule(name)
        self.image = _check_image(image)
        T = _check_T(T)
        t = _check_t(t, T)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = int(seed)
        self.renders = 0
        self.png = b""
        self._updating = False

        self.schedule_dropdown = ipywidgets.Dropdown(options=list(schedules), value=schedules[0],
                                                     description="schedule")
        self.T_dropdown = ipywidgets.Dropdown(options=sorted(set(T_CHOICES) | {T}), value=T, description="T")
        self.t_slider = ipywidgets.IntSlider(value=t, min=0, max=T - 1, description="t",
                                             continuous_update=False,
                                             layout=ipywidgets.Layout(width="60%"))
        self.zero_snr_checkbox = ipywidgets.Checkbox(value=False, description="zero terminal SNR")
        self.output = ipywidgets.Output()
        for control in (self.schedule_dropdown, self.t_slider, self.zero_snr_checkbox):
            control.observe(self._changed, names="value")
        self.T_dropdown.observe(self._T_changed, names="value")
        controls = ipywidgets.HBox([self.schedule_dropdown, self.T_dropdown, self.zero_snr_checkbox])
        super().__init__([controls, self.t_slider, self.output])
        self.render()

    def figure(self) -> Figure:
        """The figure for the current settings (what ``render`` shows)."""
        return schedule_figure(self.image, self.schedule_dropdown.value, T=self.T_dropdown.value,
                               t=self.t_slider.value, seed=self.seed,
                               zero_terminal_snr=self.zero_snr_checkbox.value)

    def render(self) -> None:
        """Redraw: one PNG replaces the Output's content (an <img> in the browser)."""
        self.png = figure_png(self.figure())
        _show_png(self.output, self.png, f"<schedule figure: {self.schedule_dropdown.value}, "
                                         f"T={self.T_dropdown.value}, t={self.t_slider.value}>")
        self.renders += 1

    def _changed(self, change) -> None:
        if not self._updating:
            self.render()

    def _T_changed(self, change) -> None:
        old_T, new_T = change["old"], change["new"]
        # keep t at the same fraction of the process:  t' = round(t (T' - 1) / (T - 1))
        new_t = round(self.t_slider.value * (new_T - 1) / (old_T - 1))
        self._updating = True
        try:
            if new_T - 1 >= self.t_slider.max:
                self.t_slider.max = new_T - 1
                self.t_slider.value = new_t
            else:
                self.t_slider.value = new_t
                self.t_slider.max = new_T - 1
        finally:
            self._updating = False
        self.render()


def schedule_explorer(image, *, T: int = 1000, schedules=SCHEDULE_CHOICES, t: int | None = None,
                      seed: int = 0) -> ScheduleExplorer:
    """An interactive schedule explorer for ``image`` (C, H, W) in [-1, 1]: pick the schedule,
    T, t and zero terminal SNR; see x_t around t and the alpha_bar and log-SNR curves.
    ``schedule_figure`` draws the same picture statically."""
    return ScheduleExplorer(image, T=T, schedules=schedules, t=t, seed=seed)


# ---------------------------------------------------------------------------- guidance explorer

CONFIG_KEYS = ("schedule", "T", "in_channels", "size", "num_classes")
GUIDANCE_STEPS = 20  # DDIM steps per picture: about a second for 16 digits on a laptop CPU
DEFAULT_ROWS = 4  # classes shown when none are named
MAX_SEED = 99
GUIDANCE_DPI = 100  # the digits are small: a sharper picture than the schedule explorer's


@dataclass(frozen=True)
class GuidanceSamples:
    """Samples of a class-conditional model at one guidance scale, and what a classifier reads in them.

    ``images`` (N, C, H, W) in [-1, 1] hold ``n_per_class`` samples of each class in ``classes``,
    class after class (row r of the picture is class ``classes[r]``); ``labels`` (N,) the class
    asked for, ``predicted`` (N,) the classifier's label, ``features`` (N, D) its pooled features.
    agreement = mean(predicted == labels); diversity = ``feature_diversity(features, labels)``.
    """

    scale: float
    classes: tuple[int, ...]
    n_per_class: int
    steps: int
    seed: int
    clip: float | None
    images: Tensor
    labels: Tensor
    predicted: Tensor
    features: Tensor
    agreement: float
    diversity: float


def feature_diversity(features: Tensor, labels: Tensor) -> float:
    """How different the samples of one class are: the mean pairwise feature distance, averaged over classes.

    For each class c with samples f_1 .. f_n (n >= 2): the mean of ||f_i - f_j|| over its
    n (n - 1) / 2 pairs i < j; then the plain mean over the classes in ``labels``. Guidance that
    makes every sample of a class alike drives it towards 0.
    """
    if not isinstance(features, Tensor) or features.dim() != 2:
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a tensor (N, D), got {got}")
    if not isinstance(labels, Tensor) or labels.shape != features.shape[:1]:
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a ({features.shape[0]},) tensor of classes, got {got}")
    per_class = []
    for c in labels.unique().tolist():
        f = features[labels == c].double()  # (n_c, D)
        if len(f) < 2:
            raise ValueError(f"class {c} has {len(f)} sample; diversity needs at least 2 per class")
        per_class.append(torch.pdist(f).mean())  # mean ||f_i - f_j|| over i < j
    return float(torch.stack(per_class).mean())


def _check_int_arg(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        where = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {where}, got {value}")
    return int(value)


def _check_scale(scale, name: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise TypeError(f"{name} must be a finite number (the guidance scale s), got {scale!r}")
    if scale < 0:
        raise ValueError(f"{name} must be >= 0 (0: unconditional, 1: conditional, > 1: guided), got {scale}")
    return float(scale)


def _check_config(config) -> dict:
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict like recipes.DIGITS_CONFIG, got {type(config).__name__}")
    missing = [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"config must give the model's {list(CONFIG_KEYS)} (like recipes.DIGITS_CONFIG); "
                         f"missing {missing}")
    return dict(config)


def _check_model_and_classifier(model, classifier, config: dict) -> None:
    """The eps-model and the classifier must both speak the config's classes and channels."""
    K = config["num_classes"]
    if not callable(model):
        raise TypeError(f"model must be a class-conditional eps-model model(x, t, y=labels), got {type(model).__name__}")
    if getattr(model, "num_classes", K) != K:
        raise ValueError(f"model has num_classes={model.num_classes} but config says num_classes={K}")
    if not isinstance(classifier, Classifier):
        raise TypeError(f"classifier must be a minildm.classifier.Classifier, got {type(classifier).__name__}")
    if list(classifier.heads.values()) != [K]:
        raise ValueError(f"classifier must have one head over the model's {K} classes, got heads {classifier.heads}")
    if classifier.in_channels != config["in_channels"]:
        raise ValueError(f"classifier reads {classifier.in_channels}-channel images but the model draws "
                         f"{config['in_channels']} (config['in_channels'])")


def _check_classes(classes, K: int) -> tuple[int, ...]:
    if classes is None:
        return tuple(range(min(K, DEFAULT_ROWS)))
    if isinstance(classes, Tensor):
        classes = classes.tolist()
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
        raise ValueError(f"classes must be a non-empty list of class indices in [0, {K - 1}], got {classes!r}")
    if any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < K for c in classes):
        raise ValueError(f"classes must be class indices in [0, {K - 1}] (the null class {K} is not one), "
                         f"got {list(classes)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must not repeat a class, got {list(classes)}")
    return tuple(int(c) for c in classes)


def _model_kwargs(labels: Tensor, null_class: int, scale: float) -> dict:
    """``samplers.sample``'s conditioning for guidance scale s: eps = eps_u + s (eps_c - eps_u).

    s = 0 is the unconditional model and s = 1 the conditional one, each a single call per step;
    any other s needs both calls.
    """
    null = torch.full_like(labels, null_class)  # (N,)
    if scale == 0:
        return {"model_kwargs": {"y": null}}
    if scale == 1:
        return {"model_kwargs": {"y": labels}}
    return {"model_kwargs": {"y": labels}, "guidance_scale": scale, "uncond_kwargs": {"y": null}}


@torch.no_grad()
def guidance_samples(model, classifier: Classifier, scale: float, *, config: Mapping = _recipes.DIGITS_CONFIG,
                     classes=None, n_per_class: int = 4, steps: int = GUIDANCE_STEPS, seed: int = 0,
                     clip: float | None = None) -> GuidanceSamples:
    """Draw ``n_per_class`` samples of each class at guidance scale ``scale`` and read them with ``classifier``.

    model: a class-conditional eps-model ``model(x_t, t, y=labels)`` whose class ``num_classes``
    is the null class (label dropout), e.g. digits-ddpm; config: its schedule, T, in_channels,
    size and num_classes (a recipe's config such as ``recipes.DIGITS_CONFIG``); classifier: a
    one-head ``Classifier`` over the same classes (e.g. digits-classifier). Sampling is DDIM
    (eta = 0, ``steps`` steps) guided by eps = eps_u + s (eps_c - eps_u) with s = ``scale``
    (Ho & Salimans' w = s - 1), from initial noise seeded by ``seed`` -- the same noise at every
    scale; the result is clamped to [-1, 1]. ``clip`` clamps x0_hat at every step (None: not
    at all): at large s that fights the guidance and leaves noise in the images (lesson 07).
    ``classes`` defaults to the first four.
    """
    config = _check_config(config)
    _check_model_and_classifier(model, classifier, config)
    classes = _check_classes(classes, config["num_classes"])
    n_per_class = _check_int_arg("n_per_class", n_per_class, 2)
    steps = _check_int_arg("steps", steps, 1, config["T"])
    seed = _check_int_arg("seed", seed, 0)
    scale = _check_scale(scale)
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not clip > 0):
        raise ValueError(f"clip must be a positive number or None, got {clip!r}")
    parameters = model.parameters() if hasattr(model, "parameters") else iter(())
    model_device = next(parameters, torch.empty(0)).device
    labels = torch.tensor(classes).repeat_interleave(n_per_class)  # (N,) class after class
    shape = (len(labels), config["in_channels"], config["size"], config["size"])
    images = _samplers.sample(model, _recipes.noise_schedule_of(config), shape, sampler="ddim", steps=steps,
                              clip=clip, generator=torch.Generator().manual_seed(seed),
                              **_model_kwargs(labels.to(model_device), config["num_classes"], scale))
    images = images.clamp(-1, 1).cpu()  # (N, C, H, W)
    (predicted,) = classifier.predict(images).values()  # (N,)
    features = classifier.features(images.to(next(classifier.parameters()).device)).cpu()  # (N, D)
    agreement = float((predicted == labels).double().mean())
    return GuidanceSamples(scale, classes, n_per_class, steps, seed, clip, images, labels, predicted, features,
                           agreement, feature_diversity(features, labels))


def guidance_grid(results: Sequence[GuidanceSamples]) -> Figure:
    """One panel per scale, side by side: rows are the classes asked for, red frames the samples the
    classifier reads as another class; each title gives s, w = s - 1, agreement and diversity."""
    if isinstance(results, GuidanceSamples):
        results = [results]
    if (isinstance(results, (str, bytes)) or not isinstance(results, Sequence) or not results
            or not all(isinstance(r, GuidanceSamples) for r in results)):
        raise ValueError("results must be a non-empty list of GuidanceSamples (from guidance_samples)")
    rows = max(len(r.classes) for r in results)
    columns = max(r.n_per_class for r in results)
    # fixed margins in inches (a layout engine would double the drawing time)
    left, right, top, bottom, gap, cell = 0.65, 0.15, 1.0, 0.35, 0.75, 0.4
    panel_w, panel_h = max(1.6, cell * columns), cell * rows
    width = max(5.0, left + right + len(results) * panel_w + (len(results) - 1) * gap)
    height = top + bottom + panel_h
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=gap / panel_w)
    for ax, r in zip(fig.subplots(1, len(results), squeeze=False)[0], results):
        h, w = r.images.shape[-2:]
        ax.imshow(_viz.tile(r.images, nrow=r.n_per_class, padding=1, pad_value=0.0), interpolation="nearest")
        hits = (r.predicted == r.labels).view(len(r.classes), r.n_per_class)  # (rows, n_per_class)
        for row, column in (~hits).nonzero().tolist():
            # the sample at (row, column) covers pixels 1 + k (size + 1) ... k (size + 1) + size: frame it
            ax.add_patch(Rectangle((column * (w + 1), row * (h + 1)), w + 1, h + 1, fill=False,
                                   edgecolor="red", linewidth=1.5))
        ax.set_yticks([1 + row * (h + 1) + (h - 1) / 2 for row in range(len(r.classes))],
                      labels=[f"{c}: {int(k)}/{r.n_per_class}" for c, k in zip(r.classes, hits.sum(1))], fontsize=8)
        ax.set_xticks([])
        ax.set_title(f"s = {r.scale:g} (w = {r.scale - 1:g})\nagreement {r.agreement:.2f}, "
                     f"diversity {r.diversity:.2f}", fontsize=9)
    settings = sorted({(r.steps, r.seed, r.clip is not None) for r in results})
    said = "; ".join(f"DDIM {steps} steps, seed {seed}" + (", x0_hat clipped" if clipped else "")
                     for steps, seed, clipped in settings)
    fig.suptitle(f"eps = eps_u + s (eps_c - eps_u), w = s - 1\n{said}", fontsize=9, y=1 - 0.04 / height, va="top")
    fig.text(0.01, 0.1 / height, "rows: class asked for, k/n read as it; red frame: the classifier reads another class",
             fontsize=7, color="0.3")
    return fig


def guidance_figure(model, classifier: Classifier, scales: Sequence[float] = (1.0, 3.0, 7.0), *,
                    config: Mapping = _recipes.DIGITS_CONFIG, classes=None, n_per_class: int = 4,
                    steps: int = GUIDANCE_STEPS, seed: int = 0, clip: float | None = None) -> Figure:
    """The guidance explorer as a static picture: ``guidance_samples`` at each of ``scales``, side
    by side (the same noise in every panel). Arguments as in ``guidance_samples``."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise ValueError(f"scales must be a non-empty list of guidance scales, got {scales!r}")
    return guidance_grid([guidance_samples(model, classifier, s, config=config, classes=classes,
                                           n_per_class=n_per_class, steps=steps, seed=seed, clip=clip)
                          for s in scales])


class GuidanceExplorer(ipywidgets.VBox):
    """The guidance explorer: sliders for the guidance scale and the seed, a readout, the picture in ``output``.

    Parts a test (or a browser) can drive: ``scale_slider`` (description "guidance scale"),
    ``seed_slider`` (description "seed"), ``clip_checkbox`` (description "clip x0_hat"),
    ``readout`` (an HTML line with agreement and diversity) and ``output``; ``render()``
    redraws; ``renders`` counts the redraws, ``png`` holds the picture on show, ``samples`` the
    ``GuidanceSamples`` behind it, ``agreement`` and ``diversity`` its readouts. Moving a
    control redraws once.
    """

    def __init__(self, model, classifier: Classifier, *, config: Mapping = _recipes.DIGITS_CONFIG, classes=None,
                 scale: float = 3.0, max_scale: float = 10.0, n_per_class: int = 4, steps: int = GUIDANCE_STEPS,
                 seed: int = 0, max_seed: int = MAX_SEED):
        max_scale = _check_scale(max_scale, "max_scale")
        if not 0 <= _check_scale(scale) <= max_scale:
            raise ValueError(f"scale must lie in [0, max_scale={max_scale:g}], got {scale}")
        max_seed = _check_int_arg("max_seed", max_seed, 0)
        seed = _check_int_arg("seed", seed, 0, max_seed)
        self.config = _check_config(config)
        _check_model_and_classifier(model, classifier, self.config)
        self.model, self.classifier = model, classifier
        self.classes = _check_classes(classes, self.config["num_classes"])
        self.n_per_class = _check_int_arg("n_per_class", n_per_class, 2)
        self.steps = _check_int_arg("steps", steps, 1, self.config["T"])
        self.renders = 0
        self.png = b""

        self.scale_slider = ipywidgets.FloatSlider(value=scale, min=0.0, max=max_scale, step=0.5,
                                                   description="guidance scale", readout_format=".1f",
                                                   continuous_update=False, style={"description_width": "initial"})
        self.seed_slider = ipywidgets.IntSlider(value=seed, min=0, max=max_seed, description="seed",
                                                continuous_update=False)
        self.clip_checkbox = ipywidgets.Checkbox(value=False, description="clip x0_hat")
        self.readout = ipywidgets.HTML()
        self.output = ipywidgets.Output()
        for control in (self.scale_slider, self.seed_slider, self.clip_checkbox):
            control.observe(self._changed, names="value")
        controls = ipywidgets.HBox([self.scale_slider, self.seed_slider, self.clip_checkbox])
        super().__init__([controls, self.readout, self.output])
        self.render()

    @property
    def agreement(self) -> float:
        """The fraction of the samples on show that the classifier labels as the class asked for."""
        return self.samples.agreement

    @property
    def diversity(self) -> float:
        """``feature_diversity`` of the samples on show."""
        return self.samples.diversity

    def render(self) -> None:
        """Sample at the controls' settings, redraw, update the readout."""
        s, seed = self.scale_slider.value, self.seed_slider.value
        self.samples = guidance_samples(self.model, self.classifier, s, config=self.config, classes=self.classes,
                                        n_per_class=self.n_per_class, steps=self.steps, seed=seed,
                                        clip=1.0 if self.clip_checkbox.value else None)
        self.png = figure_png(guidance_grid([self.samples]), dpi=GUIDANCE_DPI)
        _show_png(self.output, self.png, f"<guidance figure: s={s:g}, seed={seed}>")
        self.readout.value = (f"s = {s:g} (w = s - 1 = {s - 1:g}): agreement <b>{self.agreement:.2f}</b>, "
                              f"diversity <b>{self.diversity:.2f}</b>")
        self.renders += 1

    def _changed(self, change) -> None:
        self.render()


def guidance_explorer(model, classifier: Classifier, *, config: Mapping = _recipes.DIGITS_CONFIG, classes=None,
                      scale: float = 3.0, max_scale: float = 10.0, n_per_class: int = 4,
                      steps: int = GUIDANCE_STEPS, seed: int = 0) -> GuidanceExplorer:
    """An interactive guidance explorer for a class-conditional eps-model and a classifier over its classes
    (e.g. digits-ddpm and digits-classifier with ``config=recipes.DIGITS_CONFIG``): drag the guidance
    scale s (w = s - 1) and the seed, see the samples of each class with their agreement and diversity.
    ``guidance_figure`` draws the same picture for several scales statically."""
    return GuidanceExplorer(model, classifier, config=config, classes=classes, scale=scale, max_scale=max_scale,
                            n_per_class=n_per_class, steps=steps, seed=seed)


# explorers that need the LDM's parts live in modules of their own (which import this one) and
# are re-exported here lazily, on first use (PEP 562): name -> module
_EXPLORER_MODULES = {
    **dict.fromkeys(("DenoiseExplorer", "denoise_explorer", "denoise_figure", "denoise_trajectory"),
                    "denoise_explorer"),
    **dict.fromkeys(("LoRAExplorer", "lora_explorer", "lora_figure"), "lora_explorer"),
    **dict.fromkeys(("ControlExplorer", "control_explorer", "control_figure"), "control_explorer"),
}


def __getattr__(name: str):
    if name in _EXPLORER_MODULES:
        module = importlib.import_module(f"minildm.{_EXPLORER_MODULES[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
