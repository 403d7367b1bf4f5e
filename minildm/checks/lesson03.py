"""Checks for lesson 03 (the reverse process and the ELBO): the posterior mean, the Gaussian KL,
v-prediction, and the learned variance.

The forward-process posterior q(x_{t-1} | x_t, x0) has mean coef_x0 x0 + coef_xt x_t (Ho et al.
2020, eq. 7); each term of the variational bound is a KL between two Gaussians, in nats; a v
prediction (Salimans & Ho 2022) converts back to x0 and eps by a rotation; a learned variance
interpolates log beta_t and log beta~_t (Nichol & Dhariwal 2021, eq. 15). Arrays are indexed
0 ... T-1 as in the code, so alpha_bar_prev[0] = 1.

The inputs use short schedules with large betas (0.02 to 0.4), so an off-by-one in t, a missing
square root or alpha in place of alpha_bar changes the answer by far more than the tolerance.
"""

from __future__ import annotations

import math

import torch

from ..diffusion import normal_kl as _normal_kl
from .core import Mistake, compare

__all__ = ["posterior_mean_coefs", "normal_kl", "v_to_x0_eps", "learned_log_variance"]


def _random_betas(generator: torch.Generator) -> torch.Tensor:
    """A short increasing float64 schedule, T in [4, 20), betas in [0.02, 0.4]."""
    T = int(torch.randint(4, 20, (), generator=generator))
    betas = 0.02 + 0.38 * torch.rand(T, generator=generator, dtype=torch.float64)
    return betas.sort().values  # (T,)


def _random_points(generator: torch.Generator) -> int:
    """A batch size B and a dimension D with B != D, so a transposed answer cannot pass."""
    return int(torch.randint(3, 6, (), generator=generator)), int(torch.randint(6, 9, (), generator=generator))


# ---------------------------------------------------------------------------- posterior_mean_coefs

def _coefs(betas, alpha_bar_prev_of=None, x_t_alpha="alpha", sqrt_prev=True, sqrt_alpha=True):
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    if alpha_bar_prev_of is None:
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=betas.dtype), alpha_bar[:-1]])
    else:
        alpha_bar_prev = alpha_bar_prev_of(alpha_bar)
    signal = alpha_bar_prev.sqrt() if sqrt_prev else alpha_bar_prev
    keep = {"alpha": alphas, "alpha_bar": alpha_bar}[x_t_alpha]
    keep = keep.sqrt() if sqrt_alpha else keep
    # coef_x0 = sqrt(abar_{t-1}) beta_t / (1 - abar_t),  coef_xt = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)
    return signal * betas / (1 - alpha_bar), keep * (1 - alpha_bar_prev) / (1 - alpha_bar)


def _posterior_mean_coefs(betas):
    return _coefs(betas)


def _betas_case(generator: torch.Generator) -> dict:
    return {"betas": _random_betas(generator)}


def posterior_mean_coefs(learner) -> None:
    """Check ``learner(betas)``: (coef_x0, coef_xt) of the posterior mean, each shape (T,)."""
    __tracebackhide__ = True
    compare(learner, _posterior_mean_coefs, _betas_case, name="posterior_mean_coefs", mistakes=[
        Mistake("the two coefficients returned in the other order", lambda betas: _coefs(betas)[::-1],
                "return (coef_x0, coef_xt): the x0 coefficient first. At t = 0 it is 1 and coef_xt is 0."),
        Mistake("alpha_bar_t instead of alpha_t in the x_t coefficient",
                lambda betas: _coefs(betas, x_t_alpha="alpha_bar"),
                "x_t came from x_{t-1} by one step, scaled by sqrt(alpha_t) = sqrt(1 - beta_t), not from x0."),
        Mistake("off by one: alpha_bar_prev taken equal to alpha_bar",
                lambda betas: _coefs(betas, alpha_bar_prev_of=lambda a: a),
                "alpha_bar_prev[t] = alpha_bar[t - 1], the product up to the step *before* t; "
                "shift right by one and put 1 in front."),
        Mistake("torch.roll wrapped the last alpha_bar round to alpha_bar_prev[0]",
                lambda betas: _coefs(betas, alpha_bar_prev_of=lambda a: torch.roll(a, 1)),
                "at t = 0 nothing has been noised yet: alpha_bar_prev[0] = 1, not alpha_bar[-1]. "
                "Use torch.cat([torch.ones(1, dtype=...), alpha_bar[:-1]])."),
        Mistake("alpha_bar_prev[0] set to 0 instead of 1",
                lambda betas: _coefs(betas, alpha_bar_prev_of=lambda a: torch.cat([torch.zeros(1, dtype=a.dtype),
                                                                                   a[:-1]])),
                "alpha_bar of 'no steps at all' is the empty product, 1: x_{-1} is x0 itself."),
        Mistake("no square root on alpha_bar_prev", lambda betas: _coefs(betas, sqrt_prev=False),
                "x_{t-1} holds sqrt(alpha_bar_{t-1}) x0: the x0 coefficient has the square root."),
        Mistake("no square root on alpha_t", lambda betas: _coefs(betas, sqrt_alpha=False),
                "q(x_t | x_{t-1}) has mean sqrt(alpha_t) x_{t-1}: the x_t coefficient has the square root."),
    ], hint="alphas = 1 - betas; alpha_bar = cumprod; alpha_bar_prev = cat([1], alpha_bar[:-1]); "
            "coef_x0 = sqrt(alpha_bar_prev) betas / (1 - alpha_bar); "
            "coef_xt = sqrt(alphas) (1 - alpha_bar_prev) / (1 - alpha_bar)   (Ho et al. eq. 7)")


# ---------------------------------------------------------------------------- normal_kl

def _kl_case(generator: torch.Generator) -> dict:
    B, D = _random_points(generator)
    def draw(low, high):
        return low + (high - low) * torch.rand(B, D, generator=generator)  # (B, D)
    return {"mean1": draw(-2, 2), "logvar1": draw(-4, 1.5), "mean2": draw(-2, 2), "logvar2": draw(-4, 1.5)}


def _kl_log_std(mean1, logvar1, mean2, logvar2):
    # as if exp(logvar) were the standard deviation
    return _normal_kl(mean1, 2 * logvar1, mean2, 2 * logvar2)


def _kl_as_variance(mean1, logvar1, mean2, logvar2):
    # the log-variances used as if they were variances (NaN where they are negative)
    return 0.5 * (-1 + torch.log(logvar2) - torch.log(logvar1) + logvar1 / logvar2 + (mean1 - mean2) ** 2 / logvar2)


def _kl_unscaled_mean(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2)


def normal_kl(learner) -> None:
    """Check ``learner(mean1, logvar1, mean2, logvar2)``: KL(N1 || N2) elementwise, in nats."""
    __tracebackhide__ = True
    compare(learner, _normal_kl, _kl_case, name="normal_kl", mistakes=[
        Mistake("the KL in bits (divided by ln 2)", lambda **kw: _normal_kl(**kw) / math.log(2),
                "this exercise asks for nats; bits/dim come later, by dividing by D ln 2."),
        Mistake("the direction reversed: KL(N2 || N1)",
                lambda mean1, logvar1, mean2, logvar2: _normal_kl(mean2, logvar2, mean1, logvar1),
                "the KL is not symmetric: KL(q || p) = E_q[log q - log p] divides by the variance of the "
                "*second* Gaussian, exp(logvar2)."),
        Mistake("the factor 1/2 left out", lambda **kw: 2 * _normal_kl(**kw),
                "KL = 1/2 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 / exp(logvar2))."),
        Mistake("the -1 left out", lambda **kw: _normal_kl(**kw) + 0.5,
                "the KL of a Gaussian with itself must be 0: keep the -1 inside the bracket."),
        Mistake("exp(logvar) treated as the standard deviation", _kl_log_std,
                "logvar is the log of the *variance* sigma^2: sigma^2 = exp(logvar), sigma = exp(logvar / 2)."),
        Mistake("the log-variances used as variances", _kl_as_variance,
                "the arguments are log-variances: the variance ratio is exp(logvar1 - logvar2), "
                "and log(var2 / var1) is simply logvar2 - logvar1."),
        Mistake("(mean1 - mean2)^2 not divided by the variance", _kl_unscaled_mean,
                "the mean difference counts in units of the second Gaussian's variance: "
                "(mean1 - mean2)^2 * exp(-logvar2)."),
    ], hint="KL(N(m1, s1^2) || N(m2, s2^2)) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2; "
            "with logvar = log s^2 that is 1/2 (-1 + logvar2 - logvar1 + exp(logvar1 - logvar2) "
            "+ (m1 - m2)^2 exp(-logvar2))")


# ---------------------------------------------------------------------------- v_to_x0_eps

def _v_to_x0_eps(v, x_t, alpha_bar_t):
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    # x0 = sqrt(abar) x_t - sqrt(1 - abar) v,   eps = sqrt(abar) v + sqrt(1 - abar) x_t
    return a * x_t - s * v, a * v + s * x_t


def _v_case(generator: torch.Generator) -> dict:
    B, D = _random_points(generator)
    alpha_bar_t = 0.05 + 0.9 * torch.rand(B, 1, generator=generator)  # (B, 1): one alpha_bar per sample
    x0, eps = torch.randn(B, D, generator=generator), torch.randn(B, D, generator=generator)
    x_t = alpha_bar_t.sqrt() * x0 + (1 - alpha_bar_t).sqrt() * eps
    v = alpha_bar_t.sqrt() * eps - (1 - alpha_bar_t).sqrt() * x0
    v = v + 0.3 * torch.randn(B, D, generator=generator)  # a model's v is never exact
    return {"v": v, "x_t": x_t, "alpha_bar_t": alpha_bar_t}


def _v_other_sign(v, x_t, alpha_bar_t):
    return _v_to_x0_eps(-v, x_t, alpha_bar_t)


def _v_no_sqrt(v, x_t, alpha_bar_t):
    return alpha_bar_t * x_t - (1 - alpha_bar_t) * v, alpha_bar_t * v + (1 - alpha_bar_t) * x_t


def _v_swapped_coefficients(v, x_t, alpha_bar_t):
    return _v_to_x0_eps(v, x_t, 1 - alpha_bar_t)


def v_to_x0_eps(learner) -> None:
    """Check ``learner(v, x_t, alpha_bar_t)``: (x0, eps) from a v prediction, both shaped like x_t."""
    __tracebackhide__ = True
    compare(learner, _v_to_x0_eps, _v_case, name="v_to_x0_eps", mistakes=[
        Mistake("x0 and eps returned in the other order", lambda **kw: _v_to_x0_eps(**kw)[::-1],
                "return (x0, eps), in that order."),
        Mistake("v with the other sign (v = sqrt(1 - abar) x0 - sqrt(abar) eps)", _v_other_sign,
                "Salimans & Ho define v = sqrt(abar) eps - sqrt(1 - abar) x0, so x0 = sqrt(abar) x_t "
                "- sqrt(1 - abar) v."),
        Mistake("no square roots (alpha_bar used as an amplitude)", _v_no_sqrt,
                "the amplitudes are sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t); their squares add to 1."),
        Mistake("sqrt(alpha_bar) and sqrt(1 - alpha_bar) swapped", _v_swapped_coefficients,
                "at alpha_bar_t near 1 (little noise) x0 is almost x_t: x0 = sqrt(abar) x_t - sqrt(1 - abar) v."),
    ], hint="(x_t, v) is (x0, eps) rotated by an angle phi with cos(phi) = sqrt(abar): rotate back, "
            "x0 = sqrt(abar) x_t - sqrt(1 - abar) v,  eps = sqrt(abar) v + sqrt(1 - abar) x_t")


# ---------------------------------------------------------------------------- learned_log_variance

def _learned_log_variance(v, log_beta, log_beta_tilde):
    frac = (v + 1) / 2
    # log Sigma = frac log beta_t + (1 - frac) log beta~_t
    return frac * log_beta + (1 - frac) * log_beta_tilde


def _variance_case(generator: torch.Generator) -> dict:
    B, D = _random_points(generator)
    beta = 0.02 + 0.38 * torch.rand(B, 1, generator=generator)  # (B, 1)
    shrink = 0.05 + 0.9 * torch.rand(B, 1, generator=generator)  # beta~ = (1 - abar_prev) / (1 - abar) beta < beta
    v = 2 * torch.rand(B, D, generator=generator) - 1  # (B, D) in [-1, 1]
    return {"v": v, "log_beta": beta.log(), "log_beta_tilde": (shrink * beta).log()}


def _variance_linear(v, log_beta, log_beta_tilde):
    frac = (v + 1) / 2
    return torch.log(frac * log_beta.exp() + (1 - frac) * log_beta_tilde.exp())


def learned_log_variance(learner) -> None:
    """Check ``learner(v, log_beta, log_beta_tilde)``: Nichol & Dhariwal's interpolated log-variance."""
    __tracebackhide__ = True
    compare(learner, _learned_log_variance, _variance_case, name="learned_log_variance", mistakes=[
        Mistake("v used as the fraction itself, without (v + 1) / 2",
                lambda v, log_beta, log_beta_tilde: v * log_beta + (1 - v) * log_beta_tilde,
                "the network's v lies in [-1, 1]; map it to a fraction in [0, 1] first: frac = (v + 1) / 2."),
        Mistake("the two ends swapped (v = 1 gives beta~)",
                lambda v, log_beta, log_beta_tilde: _learned_log_variance(v, log_beta_tilde, log_beta),
                "v = 1 is the upper bound beta_t, v = -1 the lower bound beta~_t: frac multiplies log_beta."),
        Mistake("the variances interpolated instead of their logs", _variance_linear,
                "Nichol & Dhariwal interpolate in log space: frac * log_beta + (1 - frac) * log_beta_tilde."),
        Mistake("the variance returned, not its log", lambda **kw: _learned_log_variance(**kw).exp(),
                "return the log-variance, as p_mean_variance does; the variance is its exp."),
        Mistake("half the log-variance (a log standard deviation)", lambda **kw: _learned_log_variance(**kw) / 2,
                "return log Sigma, the log of the variance, not log sigma."),
    ], hint="frac = (v + 1) / 2; log Sigma = frac * log_beta + (1 - frac) * log_beta_tilde   (N&D eq. 15)")
