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

Nothing else in the package imports this module.
"""

from __future__ import annotations

import base64
import io
import numbers

import ipywidgets
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from . import schedules as _schedules

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
        self.output.outputs = ({
            "output_type": "display_data",
            "data": {"image/png": base64.b64encode(self.png).decode("ascii"),
                     "text/plain": f"<schedule figure: {self.schedule_dropdown.value}, "
                                   f"T={self.T_dropdown.value}, t={self.t_slider.value}>"},
            "metadata": {},
        },)
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
