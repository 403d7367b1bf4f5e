"""Samplers: running the reverse process from noise to data.

DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) draws x_{t-1} ~ p(x_{t-1} | x_t) step by
step. DDIM (Song et al. 2021) keeps the same trained model but takes a non-Markovian path with
the same marginals: eta = 1 is DDPM's posterior noise, eta = 0 is a deterministic map that can
skip most timesteps. Many other solvers (DPM-Solver++ of order 1, Euler on the
probability-flow ODE) are the same deterministic step written in other variables.

Classifier-free guidance (Ho & Salimans 2021) mixes a conditional and an unconditional
prediction: eps = eps_uncond + scale (eps_cond - eps_uncond). We use diffusers' ``scale``
(``guidance_scale``): scale = 1 is the plain conditional model, scale = 0 the unconditional one.
Ho & Salimans write eps = (1 + w) eps_cond - w eps_uncond, so their w = scale - 1.

Each step is a pure function on tensors that returns (x_prev, x0_hat), so a lesson can draw the
model's current guess of the clean sample at every step.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch import Tensor

from minildm.diffusion import VARIANCES, p_mean_variance, split_learned_range
from minildm.schedules import NoiseSchedule, noise_like, per_sample

SPACINGS = ("leading", "trailing", "linspace")
SAMPLERS = ("ddpm", "ddim")


def timesteps(T: int, steps: int, spacing: str = "leading", offset: int = 0) -> Tensor:
    """Which ``steps`` of the T training timesteps a sampler visits: descending int64, shape (steps,).

    The three spacings of Lin et al. (2023, Table 2), computed with the same numpy arithmetic
    as diffusers' ``set_timesteps`` so they agree exactly:
    ``"leading"``  t_i = i (T // steps) + offset     (DDIM's and Stable Diffusion's; steps_offset=1 in SD)
    ``"trailing"`` t_i = round(T - i T / steps) - 1  (always starts at T - 1, the noisiest step)
    ``"linspace"`` t_i = round(i (T - 1) / (steps - 1))
    ``offset`` is diffusers' ``steps_offset``: like diffusers, only the leading spacing uses it.
    Unlike diffusers we refuse an offset that pushes a timestep past T - 1 (diffusers returns
    T, which no schedule can index), and where numpy's float ``arange`` gives the trailing
    spacing one step too many (ending at -1, e.g. T = 1000, steps = 61) we keep the first ``steps``.
    """
    for name, value in (("T", T), ("steps", steps), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if T < 1:
        raise ValueError(f"T must be a positive number of steps, got {T}")
    if not 1 <= steps <= T:
        raise ValueError(f"steps must lie in [1, T={T}], got {steps}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if spacing == "leading":
        # t_i = i * (T // N) + offset
        ts = (np.arange(0, steps) * (T // steps))[::-1] + offset
    elif spacing == "trailing":
        # t_i = round(T - i * T / N) - 1
        ts = np.round(np.arange(T, 0, -T / steps))[:steps] - 1
    elif spacing == "linspace":
        # t_i = round(i * (T - 1) / (N - 1))
        ts = np.linspace(0, T - 1, steps).round()[::-1]
    else:
        raise ValueError(f"unknown spacing {spacing!r}; choose from {SPACINGS}")
    if ts[0] > T - 1:
        raise ValueError(f"offset={offset} pushes the first timestep to {int(ts[0])}, past T-1={T - 1}")
    return torch.from_numpy(ts.astype(np.int64).copy())


def ddpm_step(s: NoiseSchedule, model_output: Tensor, t, x_t: Tensor, prev_t=None, noise: Tensor | None = None,
              prediction: str = "eps", variance: str = "fixed_small", clip: float | None = None,
              generator: torch.Generator | None = None):
    """One ancestral step x_t -> x_prev ~ p(x_prev | x_t) (Ho et al. Algorithm 2, line 4).

    Returns (x_prev, x0_hat). ``prev_t=None`` steps to t - 1; a smaller prev_t takes a strided
    step with beta'_t = 1 - abar_t / abar_prev (prev_t < 0 lands on x0). ``variance`` is
    ``"fixed_small"`` (beta~_t), ``"fixed_large"`` (beta_t) or ``"learned_range"`` (the model
    output then has 2C channels, see ``diffusion.p_mean_variance``). ``clip`` clamps x0_hat to
    [-clip, clip] before the posterior mean is formed. No noise is added on the step that lands
    on x0 (t = 0, or prev_t < 0); diffusers adds it whenever t > 0, which differs only for
    fixed_large on a strided last step.
    """
    mean, log_var, x0_hat = p_mean_variance(s, model_output, t, x_t, prev_t,
                                            prediction=prediction, variance=variance, clip=clip)
    prev = s.timestep(t, x_t) - 1 if prev_t is None else s.timestep(prev_t, x_t, name="prev_t", final_ok=True)
    adds_noise = (prev >= 0).double()  # () or (B,): 0 on the step that lands on x0
    if not adds_noise.any():
        return mean, x0_hat
    noise = noise_like(x_t, generator) if noise is None else _checked_noise(noise, x_t)
    # x_prev = mu_theta(x_t, t) + sigma_t z
    return mean + per_sample(adds_noise, x_t) * torch.exp(0.5 * log_var) * noise, x0_hat


def ddim_step(s: NoiseSchedule, model_output: Tensor, t, prev_t, x_t: Tensor, eta: float = 0.0,
              noise: Tensor | None = None, prediction: str = "eps", final_alpha_bar: float = 1.0,
              clip: float | None = None, generator: torch.Generator | None = None):
    """One DDIM step x_t -> x_prev (Song et al. eq. 12). Returns (x_prev, x0_hat).

    prev_t < 0 is the final step, which uses ``final_alpha_bar`` as alpha_bar_prev (1.0 lands on
    x0; Stable Diffusion's ``set_alpha_to_one=False`` uses alpha_bar[0]). eta = 0 is
    deterministic; eta = 1 adds the DDPM posterior's noise. ``clip`` clamps x0_hat; eps_hat is
    kept as the model gave it (diffusers' ``use_clipped_model_output=False``).
    """
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if not 0 < final_alpha_bar <= 1:
        raise ValueError(f"final_alpha_bar must lie in (0, 1], got {final_alpha_bar}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be a positive number or None, got {clip}")
    alpha_bar, alpha_bar_prev = s.alpha_bars(t, x_t, prev_t, final_alpha_bar)
    x0_hat, eps_hat = s.split_prediction(model_output, x_t, t, prediction)
    if clip is not None:
        x0_hat = x0_hat.clamp(-clip, clip)
    # sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)     (eq. 16)
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    # x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z       (eq. 12)
    direction = (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt()
    x_prev = per_sample(alpha_bar_prev.sqrt(), x_t) * x0_hat + per_sample(direction, x_t) * eps_hat
    if eta > 0:
        noise = noise_like(x_t, generator) if noise is None else _checked_noise(noise, x_t)
        x_prev = x_prev + per_sample(sigma, x_t) * noise
    return x_prev, x0_hat


def _checked_noise(noise: Tensor, x_t: Tensor) -> Tensor:
    if not isinstance(noise, Tensor) or noise.shape != x_t.shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"noise must be a tensor shaped like x_t {tuple(x_t.shape)}, got {got}")
    return noise


def cfg(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: eps_uncond + scale (eps_cond - eps_uncond).

    scale = 1 gives eps_cond, scale = 0 eps_uncond, scale > 1 pushes past the conditional
    prediction. Ho & Salimans' guidance weight is w = scale - 1.
    """
    # eps~ = eps_u + s (eps_c - eps_u)
    return eps_uncond + scale * (eps_cond - eps_uncond)


def rescale_cfg(noise_cfg: Tensor, noise_cond: Tensor, phi: float = 0.7) -> Tensor:
    """Guidance rescale (Lin et al. 2023, sec. 3.4; diffusers' ``rescale_noise_cfg``).

    Rescales the guided prediction to the per-sample standard deviation of the conditional one
    (large scales blow it up and over-expose images), then mixes: phi rescaled + (1 - phi) guided.
    """
    dims = list(range(1, noise_cond.dim()))
    # x_rescaled = x_cfg * std(x_cond) / std(x_cfg)
    rescaled = noise_cfg * (noise_cond.std(dim=dims, keepdim=True) / noise_cfg.std(dim=dims, keepdim=True))
    # x_final = phi x_rescaled + (1 - phi) x_cfg
    return phi * rescaled + (1 - phi) * noise_cfg


class Trajectory:
    """A ``sample`` callback that keeps CPU copies of x_t and x0_hat at every ``every``-th step.

    After sampling: ``ts`` (list of int), ``xs`` and ``x0_hats`` (lists of tensors), and
    ``stacked()`` gives them as tensors of shape (steps, B, ...) for plots and GIFs.
    """

    def __init__(self, every: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.every = every
        self.ts: list[int] = []
        self.xs: list[Tensor] = []
        self.x0_hats: list[Tensor] = []

    def __call__(self, i: int, t: int, x_t: Tensor, x0_hat: Tensor) -> None:
        if i % self.every == 0:
            self.ts.append(int(t))
            self.xs.append(x_t.detach().cpu().clone())
            self.x0_hats.append(x0_hat.detach().cpu().clone())

    def __len__(self) -> int:
        return len(self.ts)

    def stacked(self) -> tuple[Tensor, Tensor]:
        """(xs, x0_hats) as tensors of shape (recorded steps, B, ...)."""
        return torch.stack(self.xs), torch.stack(self.x0_hats)


@torch.no_grad()
def sample(model, schedule: NoiseSchedule, shape, *, sampler: str = "ddpm", steps: int | None = None,
           spacing: str = "leading", eta: float = 0.0, prediction: str = "eps", variance: str = "fixed_small",
           clip: float | None = None, generator: torch.Generator | None = None, device=None,
           model_kwargs: dict | None = None, guidance_scale: float | None = None,
           uncond_kwargs: dict | None = None, callback=None, x_T: Tensor | None = None) -> Tensor:
    """Generate samples: start from x_T ~ N(0, I) and apply ``steps`` sampler steps. Returns x0.

    ``model(x_t, t_batch, **model_kwargs)`` is called with t_batch a LongTensor[B]. ``sampler``
    is ``"ddpm"`` (ancestral; strided when steps < T) or ``"ddim"`` (with ``eta``); ``steps``
    defaults to all T; ``spacing`` picks which timesteps (see ``timesteps``). With
    ``guidance_scale`` the model also runs with ``uncond_kwargs`` and the two predictions are
    combined by ``cfg`` (for learned_range only the prediction channels are guided; the variance
    comes from the conditional call). ``callback(i, t, x_t, x0_hat)`` sees each step's input
    x_t and the model's x0 estimate from it. ``device`` defaults to x_T's, else the model's
    parameters', else the CPU; the initial noise is drawn from ``generator`` on its own device.
    The model's train/eval mode is left as it is: call ``model.eval()`` first.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose from {VARIANCES}")
    if guidance_scale is not None and uncond_kwargs is None:
        raise ValueError("guidance_scale needs uncond_kwargs: the model kwargs of the unconditional call")
    shape = tuple(shape)
    if device is None:
        parameters = model.parameters() if hasattr(model, "parameters") else iter(())
        device = x_T.device if x_T is not None else next(parameters, torch.empty(0)).device
    if x_T is None:
        gen_device = generator.device if generator is not None else device
        x_T = torch.randn(shape, generator=generator, device=gen_device)
    elif tuple(x_T.shape) != shape:
        raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {shape}")
    x = x_T.to(device)
    ts = timesteps(schedule.T, schedule.T if steps is None else steps, spacing)
    for i, t in enumerate(ts.tolist()):
        prev_t = ts[i + 1].item() if i + 1 < len(ts) else -1
        t_batch = torch.full((shape[0],), t, dtype=torch.long, device=device)
        output = model(x, t_batch, **(model_kwargs or {}))
        if guidance_scale is not None:
            output = _guided(output, model(x, t_batch, **uncond_kwargs), x, guidance_scale, variance)
        if sampler == "ddpm":
            x_prev, x0_hat = ddpm_step(schedule, output, t, x, prev_t, prediction=prediction, variance=variance,
                                       clip=clip, generator=generator)
        else:
            if variance == "learned_range":
                output, _ = split_learned_range(output, x)
            x_prev, x0_hat = ddim_step(schedule, output, t, prev_t, x, eta=eta, prediction=prediction,
                                       clip=clip, generator=generator)
        if callback is not None:
            callback(i, t, x, x0_hat)
        x = x_prev
    return x


def _guided(cond: Tensor, uncond: Tensor, x: Tensor, scale: float, variance: str) -> Tensor:
    """cfg on the prediction channels; a learned variance is taken from the conditional output."""
    if variance != "learned_range":
        return cfg(uncond, cond, scale)
    cond_pred, cond_v = split_learned_range(cond, x)
    uncond_pred, _ = split_learned_range(uncond, x)
    return torch.cat([cfg(uncond_pred, cond_pred, scale), cond_v], dim=1)  # (B, 2C, ...)
