"""Checks for lesson 06 (faster sampling): DDIM's sigma, one DDIM step, trailing timesteps, slerp.

DDIM (Song et al. 2021, eq. 12) steps from x_t to x_prev with the model's noise estimate eps:

    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma z,
    sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)     (eq. 16)

The trailing spacing (Lin et al. 2023, Table 2) visits t_i = round(T - i T / N) - 1, so it
always starts at the noisiest step T - 1. Spherical interpolation (Shoemake 1985) between two
noise tensors keeps the norm of a Gaussian draw, which a straight line does not.

Inputs are drawn so that each slip moves the answer past the tolerance: strides where
abar_prev is well above abar_t (so sigma, sigma^2 and their factors differ by tens of per cent),
eta > 0 (so the noise terms count), step counts where T / N is not a whole number (so floor
and round differ), interpolation weights away from 1/2 (so swapped weights show).
"""

from __future__ import annotations

import numpy as np
import torch

from ..samplers import ddim_step as _package_ddim_step
from ..samplers import timesteps as _package_timesteps
from ..schedules import NoiseSchedule
from .core import Mistake, compare

__all__ = ["ddim_sigma", "ddim_step_by_hand", "trailing_timesteps", "slerp"]


def _alpha_bar_pair(generator: torch.Generator, k: int | None = None):
    """abar_t in [0.01, 0.9] and abar_prev between it and 1 (a strided step): tensors (k,) or floats."""
    shape = () if k is None else (k,)
    alpha_bar_t = 0.01 + 0.89 * torch.rand(shape, generator=generator, dtype=torch.float64)
    alpha_bar_prev = alpha_bar_t + (1 - alpha_bar_t) * (0.2 + 0.7 * torch.rand(shape, generator=generator,
                                                                               dtype=torch.float64))
    if k is None:
        return alpha_bar_t.item(), alpha_bar_prev.item()
    return alpha_bar_t, alpha_bar_prev


def _eta(generator: torch.Generator) -> float:
    return round(0.2 + 0.8 * torch.rand((), generator=generator).item(), 3)  # in [0.2, 1]


# ---------------------------------------------------------------------------- ddim_sigma

def _sigma_case(generator: torch.Generator) -> dict:
    alpha_bar_t, alpha_bar_prev = _alpha_bar_pair(generator, k=int(torch.randint(3, 7, (), generator=generator)))
    return {"alpha_bar_t": alpha_bar_t, "alpha_bar_prev": alpha_bar_prev, "eta": _eta(generator)}


def _sigma(alpha_bar_t, alpha_bar_prev, eta):
    # sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t)).sqrt() * (1 - alpha_bar_t / alpha_bar_prev).sqrt()


def ddim_sigma(learner) -> None:
    """Check ``learner(alpha_bar_t, alpha_bar_prev, eta)``: (K,) tensors and a float -> sigma, (K,)."""
    __tracebackhide__ = True
    compare(learner, _sigma, _sigma_case, name="ddim_sigma", mistakes=[
        Mistake("the variance sigma^2 instead of the standard deviation sigma",
                lambda alpha_bar_t, alpha_bar_prev, eta: _sigma(alpha_bar_t, alpha_bar_prev, eta) ** 2,
                "eq. 16 gives sigma itself: both factors sit under square roots, and eta multiplies the result "
                "once."),
        Mistake("the first factor upside down: (1 - abar_t) / (1 - abar_prev)",
                lambda alpha_bar_t, alpha_bar_prev, eta:
                eta * ((1 - alpha_bar_t) / (1 - alpha_bar_prev)).sqrt() * (1 - alpha_bar_t / alpha_bar_prev).sqrt(),
                "the factor is the posterior's shrinkage (1 - abar_prev) / (1 - abar_t), which is below 1: "
                "the step lands at a less noisy level."),
        Mistake("sqrt(abar_t / abar_prev) in place of sqrt(1 - abar_t / abar_prev)",
                lambda alpha_bar_t, alpha_bar_prev, eta:
                eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t)).sqrt() * (alpha_bar_t / alpha_bar_prev).sqrt(),
                "the second factor is sqrt(beta'_t) with beta'_t = 1 - abar_t / abar_prev, the strided step's "
                "beta, not sqrt(alpha'_t)."),
    ], hint="return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t)).sqrt() "
            "* (1 - alpha_bar_t / alpha_bar_prev).sqrt()")


# ---------------------------------------------------------------------------- ddim_step_by_hand

def _step_case(generator: torch.Generator) -> dict:
    alpha_bar_t, alpha_bar_prev = _alpha_bar_pair(generator)
    shape = (int(torch.randint(1, 4, (), generator=generator)), 1, 4, 4)
    return {"x_t": torch.randn(shape, generator=generator), "eps": torch.randn(shape, generator=generator),
            "alpha_bar_t": alpha_bar_t, "alpha_bar_prev": alpha_bar_prev, "eta": _eta(generator),
            "noise": torch.randn(shape, generator=generator)}


def _two_step_schedule(alpha_bar_t: float, alpha_bar_prev: float) -> NoiseSchedule:
    """A schedule with alpha_bar = [abar_prev, abar_t], so that minildm's step from t = 1 to 0 is the pair's step."""
    return NoiseSchedule(torch.tensor([1 - alpha_bar_prev, 1 - alpha_bar_t / alpha_bar_prev], dtype=torch.float64))


def _step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise):
    schedule = _two_step_schedule(alpha_bar_t, alpha_bar_prev)
    x_prev, _ = _package_ddim_step(schedule, eps, 1, 0, x_t, eta=eta, noise=noise)
    return x_prev


def _step_with(x0_scale="sqrt", direction="with_sigma", noise_scale="sigma", subtract_noise=True):
    """Eq. 12 with one part changed, for the mistakes below."""
    def step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise):
        a_t, a_prev = torch.tensor(alpha_bar_t), torch.tensor(alpha_bar_prev)
        sigma = _sigma(a_t, a_prev, eta).float()
        signal = a_t.sqrt() if x0_scale == "sqrt" else a_t
        x0_hat = ((x_t - (1 - a_t).sqrt() * eps) if subtract_noise else x_t) / signal.float()
        spread = 1 - a_prev - sigma**2 if direction == "with_sigma" else 1 - a_prev
        z_scale = sigma if noise_scale == "sigma" else sigma**2
        return a_prev.sqrt().float() * x0_hat + spread.sqrt().float() * eps + z_scale * noise
    return step


def ddim_step_by_hand(learner) -> None:
    """Check ``learner(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise)`` -> x_prev (eq. 12), shaped like x_t."""
    __tracebackhide__ = True
    compare(learner, _step, _step_case, name="ddim_step_by_hand", mistakes=[
        Mistake("the direction term without sigma^2: sqrt(1 - abar_prev) eps", _step_with(direction="no_sigma"),
                "the noise budget at the lower level is 1 - abar_prev, shared between the direction to x_t and "
                "the fresh noise: sqrt(1 - abar_prev - sigma^2) eps + sigma z."),
        Mistake("x0_hat divided by abar_t instead of sqrt(abar_t)", _step_with(x0_scale="linear"),
                "x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, so "
                "x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."),
        Mistake("fresh noise scaled by sigma^2 instead of sigma", _step_with(noise_scale="variance"),
                "sigma is a standard deviation: add sigma * noise."),
        Mistake("x0_hat = x_t / sqrt(abar_t), without removing the predicted noise", _step_with(subtract_noise=False),
                "subtract the noise first: x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."),
    ], hint="sigma as in ddim_sigma; x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t); return "
            "sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma noise")


# ---------------------------------------------------------------------------- trailing_timesteps

_TRAILING_CASES = [  # T / N not whole (floor and round differ) and whole; N = 1 and N = T - 1
    {"T": 1000, "steps": 7}, {"T": 1000, "steps": 10}, {"T": 1000, "steps": 3}, {"T": 50, "steps": 7},
    {"T": 250, "steps": 6}, {"T": 1000, "steps": 50}, {"T": 20, "steps": 1}, {"T": 20, "steps": 19},
]


def _trailing(T, steps):
    return _package_timesteps(T, steps, "trailing")


def _trailing_with(rounding=np.round, minus_one=True, descending=True):
    def trailing(T, steps):
        # t_i = round(T - i T / N) - 1
        ts = rounding(T - np.arange(steps) * T / steps) - (1 if minus_one else 0)
        ts = torch.from_numpy(ts.astype(np.int64))
        return ts if descending else ts.flip(0)
    return trailing


def trailing_timesteps(learner) -> None:
    """Check ``learner(T, steps)``: the trailing spacing, a descending int64 tensor of ``steps`` timesteps."""
    __tracebackhide__ = True
    compare(learner, _trailing, _TRAILING_CASES, name="trailing_timesteps", mistakes=[
        Mistake("the leading spacing (i * (T // N), which never visits T - 1)",
                lambda T, steps: _package_timesteps(T, steps, "leading"),
                "trailing counts down from the end: t_i = round(T - i T / N) - 1, so the first timestep is T - 1."),
        Mistake("the - 1 left out (the first timestep is T, past the last index T - 1)",
                _trailing_with(minus_one=False),
                "timesteps are 0-indexed: subtract 1 after rounding, so the first one is T - 1."),
        Mistake("rounded down instead of to the nearest integer", _trailing_with(rounding=np.floor),
                "round T - i T / N to the nearest integer (np.round or torch.round), not down (int() or //)."),
        Mistake("in ascending order", _trailing_with(descending=False),
                "a sampler goes from noise to data: the timesteps must run from T - 1 downwards."),
    ], hint="return torch.round(T - torch.arange(steps, dtype=torch.float64) * T / steps).long() - 1")


# ---------------------------------------------------------------------------- slerp

def _slerp_case(generator: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 3, (), generator=generator)), 4, 4)
    alpha = 0.1 + 0.3 * torch.rand((), generator=generator).item()  # in [0.1, 0.4] or [0.6, 0.9]: never 1/2
    if torch.rand((), generator=generator) < 0.5:
        alpha = 1 - alpha
    return {"z0": torch.randn(shape, generator=generator), "z1": torch.randn(shape, generator=generator),
            "alpha": round(alpha, 3)}


def _slerp_with(swap=False, divide=True):
    def interpolate(z0, z1, alpha):
        # cos theta = <z0, z1> / (|z0| |z1|)
        cos = (z0 * z1).sum() / (z0.norm() * z1.norm())
        theta = torch.arccos(cos.clamp(-1, 1))
        w0, w1 = torch.sin((1 - alpha) * theta), torch.sin(alpha * theta)
        if swap:
            w0, w1 = w1, w0
        # slerp = (sin((1 - a) theta) z0 + sin(a theta) z1) / sin theta
        mixed = w0 * z0 + w1 * z1
        return mixed / torch.sin(theta) if divide else mixed
    return interpolate


def slerp(learner) -> None:
    """Check ``learner(z0, z1, alpha)``: spherical interpolation of two tensors (as flat vectors), shaped like z0."""
    __tracebackhide__ = True
    compare(learner, _slerp_with(), _slerp_case, name="slerp", mistakes=[
        Mistake("a straight line: (1 - alpha) z0 + alpha z1",
                lambda z0, z1, alpha: (1 - alpha) * z0 + alpha * z1,
                "interpolate the angle, not the coordinates: weights sin((1 - alpha) theta) / sin(theta) and "
                "sin(alpha theta) / sin(theta), with cos(theta) = <z0, z1> / (|z0| |z1|)."),
        Mistake("the two weights swapped (alpha = 0 gives z1)", _slerp_with(swap=True),
                "at alpha = 0 the result must be z0: z0 gets sin((1 - alpha) theta), z1 gets sin(alpha theta)."),
        Mistake("the weights not divided by sin(theta)", _slerp_with(divide=False),
                "divide by sin(theta), so that alpha = 0 gives z0 exactly."),
    ], hint="theta = torch.arccos((z0 * z1).sum() / (z0.norm() * z1.norm())); return (torch.sin((1 - alpha) * theta) "
            "* z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)")
