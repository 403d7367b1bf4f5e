"""Checks for lesson 01 (the forward process): one Markov step, alpha_bar, q_sample and back.

The forward process adds Gaussian noise in T small steps (Ho et al. 2020, eq. 2),
x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, and the steps compose into one closed
form (eq. 4), x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps with
alpha_bar_t = prod_{s<=t} (1 - beta_s). Arrays are indexed 0 ... T-1 as in the code.

The inputs are drawn with large betas (0.02 to 0.4) and short schedules so that the usual
slips (an off-by-one in t, a variance used as a standard deviation, a missing square root)
change the answer by far more than the tolerance.
"""

from __future__ import annotations

import torch

from ..schedules import NoiseSchedule
from .core import Mistake, compare

__all__ = ["alpha_bar_from_betas", "markov_step", "q_sample", "noise_from_xt"]


def _random_betas(generator: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    """A short increasing schedule, T in [4, 20), betas in [0.02, 0.4]."""
    T = int(torch.randint(4, 20, (), generator=generator))
    betas = 0.02 + 0.38 * torch.rand(T, generator=generator, dtype=torch.float64)
    return betas.sort().values.to(dtype)  # (T,)


def _random_x(generator: torch.Generator) -> torch.Tensor:
    """Images (B, C, H, W) or 2-D points (B, 2), with B different from every other axis."""
    B = int(torch.randint(3, 6, (), generator=generator))
    if torch.rand((), generator=generator) < 0.3:
        return torch.randn(B, 2, generator=generator) * 2  # (B, 2)
    return torch.rand(B, 3, 6, 7, generator=generator) * 2 - 1  # (B, 3, 6, 7)


def _per_sample(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return coef.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)


# ---------------------------------------------------------------------------- alpha_bar_from_betas

def _alpha_bar(betas):
    return NoiseSchedule(betas).alpha_bar


def _betas_case(generator: torch.Generator) -> dict:
    return {"betas": _random_betas(generator, torch.float64)}


def alpha_bar_from_betas(learner) -> None:
    """Check ``learner(betas)``: alpha_bar[t] = prod_{s<=t} (1 - betas[s]), shape (T,)."""
    __tracebackhide__ = True
    compare(learner, _alpha_bar, _betas_case, name="alpha_bar_from_betas", mistakes=[
        Mistake("the product of the betas", lambda betas: torch.cumprod(betas, 0),
                "alpha_bar multiplies the alphas, alpha_t = 1 - beta_t: the fraction of signal each step keeps."),
        Mistake("the alphas, not their running product", lambda betas: 1 - betas,
                "alpha_t = 1 - beta_t is one step; alpha_bar_t is the product over all steps up to t "
                "(torch.cumprod)."),
        Mistake("a sum instead of a product", lambda betas: 1 - torch.cumsum(betas, 0),
                "1 - sum(beta) is only the first-order approximation of prod(1 - beta); use torch.cumprod."),
        Mistake("exp(-sum(beta))", lambda betas: torch.exp(-torch.cumsum(betas, 0)),
                "exp(-sum(beta)) only approximates prod(1 - beta) for tiny betas; use torch.cumprod."),
        Mistake("shifted by one step (this is alpha_bar_prev)",
                lambda betas: torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1 - betas, 0)[:-1]]),
                "alpha_bar[0] must already include the first step: alpha_bar[0] = 1 - betas[0], not 1."),
    ], hint="alpha_bar = torch.cumprod(1 - betas, dim=0)")


# ---------------------------------------------------------------------------- markov_step

def _markov_step(x_prev, t, betas, noise):
    beta = betas[t]
    # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise


def _markov_case(generator: torch.Generator) -> dict:
    betas = _random_betas(generator)
    x_prev = _random_x(generator)
    return {"x_prev": x_prev, "t": int(torch.randint(len(betas), (), generator=generator)), "betas": betas,
            "noise": torch.randn(x_prev.shape, generator=generator)}


def _markov_step_alpha_bar(x_prev, t, betas, noise):
    alpha_bar = torch.cumprod(1 - betas, 0)[t]
    return alpha_bar.sqrt() * x_prev + (1 - alpha_bar).sqrt() * noise


def markov_step(learner) -> None:
    """Check ``learner(x_prev, t, betas, noise)``: one step x_{t-1} -> x_t of the forward chain."""
    __tracebackhide__ = True
    compare(learner, _markov_step, _markov_case, name="markov_step", mistakes=[
        Mistake("the variance beta_t used as the noise's standard deviation",
                lambda x_prev, t, betas, noise: (1 - betas[t]).sqrt() * x_prev + betas[t] * noise,
                "N(mean, beta I) has standard deviation sqrt(beta): multiply the noise by beta_t.sqrt()."),
        Mistake("no square root on the signal",
                lambda x_prev, t, betas, noise: (1 - betas[t]) * x_prev + betas[t].sqrt() * noise,
                "the mean is sqrt(1 - beta_t) x_{t-1}, so that the variance stays 1: (1 - beta) + beta = 1."),
        Mistake("off by one in t (betas[t - 1])",
                lambda x_prev, t, betas, noise: _markov_step(x_prev, t - 1, betas, noise),
                "arrays are 0-indexed: step t uses betas[t] (betas[0] is the very first step)."),
        Mistake("alpha_bar instead of beta (a jump from x0, not one step)", _markov_step_alpha_bar,
                "that is the closed form q(x_t | x0); one step of the chain uses only beta_t."),
        Mistake("noise subtracted",
                lambda x_prev, t, betas, noise: (1 - betas[t]).sqrt() * x_prev - betas[t].sqrt() * noise,
                "the step adds noise: + sqrt(beta_t) * noise."),
        Mistake("signal and noise coefficients swapped",
                lambda x_prev, t, betas, noise: betas[t].sqrt() * x_prev + (1 - betas[t]).sqrt() * noise,
                "beta_t is the (small) noise variance: x_prev gets sqrt(1 - beta_t), the noise sqrt(beta_t)."),
    ], hint="x_t = sqrt(1 - betas[t]) * x_prev + sqrt(betas[t]) * noise")


# ---------------------------------------------------------------------------- q_sample

def _q_sample(x0, t, alpha_bar, noise):
    abar = _per_sample(alpha_bar[t], x0)  # (B, 1, ..., 1)
    # x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def _closed_form_case(generator: torch.Generator) -> dict:
    alpha_bar = torch.cumprod(1 - _random_betas(generator), 0)  # (T,)
    x0 = _random_x(generator)
    t = torch.randint(len(alpha_bar), (len(x0),), generator=generator)  # (B,)
    t[0] = 0  # the first step, where an off-by-one in t shows most clearly
    return {"x0": x0, "t": t, "alpha_bar": alpha_bar, "noise": torch.randn(x0.shape, generator=generator)}


def _q_sample_variance(x0, t, alpha_bar, noise):
    abar = _per_sample(alpha_bar[t], x0)
    return abar.sqrt() * x0 + (1 - abar) * noise


def _q_sample_no_sqrt_signal(x0, t, alpha_bar, noise):
    abar = _per_sample(alpha_bar[t], x0)
    return abar * x0 + (1 - abar).sqrt() * noise


def _q_sample_previous(x0, t, alpha_bar, noise):
    return _q_sample(x0, t - 1, alpha_bar, noise)


def _q_sample_minus(x0, t, alpha_bar, noise):
    abar = _per_sample(alpha_bar[t], x0)
    return abar.sqrt() * x0 - (1 - abar).sqrt() * noise


def _q_sample_swapped(x0, t, alpha_bar, noise):
    abar = _per_sample(alpha_bar[t], x0)
    return (1 - abar).sqrt() * x0 + abar.sqrt() * noise


def _q_sample_first_t(x0, t, alpha_bar, noise):
    return _q_sample(x0, t[:1].expand(len(t)), alpha_bar, noise)


def q_sample(learner) -> None:
    """Check ``learner(x0, t, alpha_bar, noise)``: x_t in closed form, one timestep per sample."""
    __tracebackhide__ = True
    compare(learner, _q_sample, _closed_form_case, name="q_sample", mistakes=[
        Mistake("the variance (1 - alpha_bar) used as the noise's standard deviation", _q_sample_variance,
                "q(x_t | x0) has variance 1 - alpha_bar_t, so the noise is scaled by its square root."),
        Mistake("no square root on the signal", _q_sample_no_sqrt_signal,
                "the mean is sqrt(alpha_bar_t) x0: both coefficients are square roots, and their squares add to 1."),
        Mistake("off by one in t (alpha_bar[t - 1])", _q_sample_previous,
                "arrays are 0-indexed: q_sample(x0, t) uses alpha_bar[t]; alpha_bar[0] is after one step."),
        Mistake("noise subtracted", _q_sample_minus, "x_t = sqrt(abar) x0 + sqrt(1 - abar) noise: a plus sign."),
        Mistake("signal and noise coefficients swapped", _q_sample_swapped,
                "alpha_bar_t is the fraction of signal *kept*: x0 gets sqrt(alpha_bar_t)."),
        Mistake("every sample given the first sample's timestep", _q_sample_first_t,
                "t holds one timestep per sample: index alpha_bar with the whole tensor t, alpha_bar[t]."),
    ], hint="look up alpha_bar[t] (shape (B,)), reshape it to (B, 1, ..., 1) with "
            ".view(-1, *[1] * (x0.dim() - 1)) so it broadcasts, then sqrt(abar) * x0 + sqrt(1 - abar) * noise")


# ---------------------------------------------------------------------------- noise_from_xt

def _noise_from_xt(x0, x_t, t, alpha_bar):
    abar = _per_sample(alpha_bar[t], x0)  # (B, 1, ..., 1)
    # eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def _inverse_case(generator: torch.Generator) -> dict:
    case = _closed_form_case(generator)
    x_t = _q_sample(**case)
    return {"x0": case["x0"], "x_t": x_t, "t": case["t"], "alpha_bar": case["alpha_bar"]}


def _noise_divided_by_variance(x0, x_t, t, alpha_bar):
    abar = _per_sample(alpha_bar[t], x0)
    return (x_t - abar.sqrt() * x0) / (1 - abar)


def _noise_x0_unscaled(x0, x_t, t, alpha_bar):
    abar = _per_sample(alpha_bar[t], x0)
    return (x_t - x0) / (1 - abar).sqrt()


def _noise_sign(x0, x_t, t, alpha_bar):
    return -_noise_from_xt(x0, x_t, t, alpha_bar)


def _noise_previous(x0, x_t, t, alpha_bar):
    return _noise_from_xt(x0, x_t, t - 1, alpha_bar)


def noise_from_xt(learner) -> None:
    """Check ``learner(x0, x_t, t, alpha_bar)``: the eps with x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
    __tracebackhide__ = True
    compare(learner, _noise_from_xt, _inverse_case, name="noise_from_xt", mistakes=[
        Mistake("divided by the variance (1 - alpha_bar) instead of its square root", _noise_divided_by_variance,
                "the noise was multiplied by sqrt(1 - alpha_bar_t); undo exactly that."),
        Mistake("x0 subtracted without its factor sqrt(alpha_bar)", _noise_x0_unscaled,
                "x_t holds sqrt(alpha_bar_t) x0, not x0: subtract that before dividing."),
        Mistake("the sign is flipped", _noise_sign, "eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar): x_t comes first."),
        Mistake("off by one in t (alpha_bar[t - 1])", _noise_previous,
                "use the same alpha_bar[t] that made x_t: arrays are 0-indexed."),
    ], hint="solve x_t = sqrt(abar) x0 + sqrt(1 - abar) eps for eps, with abar = alpha_bar[t] "
            "reshaped to (B, 1, ..., 1)")
