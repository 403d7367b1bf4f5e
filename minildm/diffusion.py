"""Training objectives and likelihood: the reverse process as a hierarchical VAE.

The model learns p(x_{t-1} | x_t) = N(mu_theta(x_t, t), Sigma_theta(x_t, t)). Its evidence lower
bound splits into one term per step (Ho et al. 2020, eq. 5):

    L_vlb = L_T + sum_{t>1} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x0) || N(0, I))                  (the prior; no parameters)
    L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) (Gaussian vs Gaussian: closed form)
    L_0     = -log p(x0 | x_1)                            (a discretised Gaussian decoder)

Ho et al. drop the weights and train on L_simple = ||eps - eps_theta(x_t, t)||^2 (their eq. 14);
Nichol & Dhariwal (2021) also learn the variance by interpolating, in log space, between the two
natural choices beta_t and beta~_t (their eq. 15), trained with L_hybrid = L_simple + 0.001 L_vlb.

With our 0-indexed timesteps t = 0 ... T-1, the term a timestep t contributes is the KL for the
step t -> t-1 when t > 0, and the decoder NLL L_0 when t = 0. Likelihoods are reported in bits
per dimension: nats summed over the D dimensions of one sample, divided by D ln 2.

A model is any callable ``model(x_t, t, **model_kwargs) -> output`` with t a LongTensor[B]; its
output is eps, x0 or v (``prediction``), and with ``variance="learned_range"`` it has twice the
channels (dim 1): the prediction first, then v in [-1, 1] for the variance.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from minildm.schedules import PREDICTIONS, NoiseSchedule, noise_like, per_sample

VARIANCES = ("fixed_small", "fixed_large", "learned_range")


def normal_kl(mean1, logvar1, mean2, logvar2) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

    Arguments broadcast; plain numbers are allowed for all but one of them.
    """
    like = next((x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, Tensor)), None)
    if like is None:
        raise TypeError("normal_kl needs at least one torch.Tensor argument")
    logvar1, logvar2 = (torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in (logvar1, logvar2))
    # KL = 1/2 (-1 + log s2^2 - log s1^2 + s1^2 / s2^2 + (m1 - m2)^2 / s2^2)
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) elementwise, in nats, for data quantised to 256 levels in [-1, 1] (Ho et al. eq. 13).

    Each level owns a bin of width 2/255 centred on it; the lowest and highest bins extend to
    -inf and +inf, so the 256 probabilities sum to 1. ``log_scale`` is the log standard
    deviation of the Gaussian. Uses the exact normal CDF (improved-diffusion uses a tanh
    approximation of it; the two differ by less than 1e-3).
    """
    if x.shape != mean.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but mean has shape {tuple(mean.shape)}; they must match")
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    # the bin [x - 1/255, x + 1/255] in standard units
    plus_in = inv_std * (centered + 1.0 / 255)
    min_in = inv_std * (centered - 1.0 / 255)
    # log P(y < x + 1/255): the open lowest bin;   log P(y > x - 1/255): the open highest bin
    log_cdf_plus = torch.special.log_ndtr(plus_in)
    log_one_minus_cdf_min = torch.special.log_ndtr(-min_in)
    # P(bin) = Phi(plus) - Phi(min), taken from the nearer tail so float32 keeps its digits
    cdf_delta = torch.where(
        min_in > 0,
        torch.special.ndtr(-min_in) - torch.special.ndtr(-plus_in),
        torch.special.ndtr(plus_in) - torch.special.ndtr(min_in),
    )
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, cdf_delta.clamp(min=1e-12).log()),
    )


def split_learned_range(model_output: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
    """Split a learned-variance output (2C channels on dim 1) into (prediction, v)."""
    C = x_t.shape[1] if x_t.dim() > 1 else None
    if C is None or model_output.shape != (x_t.shape[0], 2 * C, *x_t.shape[2:]):
        raise ValueError(
            f"variance='learned_range' needs a model output with twice x_t's channels, shape "
            f"{(x_t.shape[0], 2 * (C or 0), *x_t.shape[2:])}; got {tuple(model_output.shape)}"
        )
    return model_output[:, :C], model_output[:, C:]  # (B, C, ...), (B, C, ...)


def p_mean_variance(s: NoiseSchedule, model_output: Tensor, t, x_t: Tensor, prev_t=None, *,
                    prediction: str = "eps", variance: str = "fixed_small", clip: float | None = None):
    """The model's reverse step p(x_prev | x_t) = N(mean, exp(log_var)): (mean, log_var, x0_hat).

    The mean is the posterior mean q(x_prev | x_t, x0) with x0 replaced by the model's estimate
    x0_hat (clamped to [-clip, clip] when ``clip`` is given). The variance is
    ``"fixed_small"`` beta~_t (the posterior's), ``"fixed_large"`` beta_t, or
    ``"learned_range"``: log_var = f log beta_t + (1 - f) log beta~_t with f = (v + 1) / 2
    (Nichol & Dhariwal eq. 15). On a strided step (``prev_t``) beta_t becomes
    beta'_t = 1 - abar_t / abar_prev. On the step that lands on x0 every choice uses the clipped
    log beta~ of ``NoiseSchedule.q_posterior`` (as improved-diffusion), except that learned_range
    still mixes in log beta.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose from {VARIANCES}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be a positive number or None, got {clip}")
    if variance == "learned_range":
        model_output, v = split_learned_range(model_output, x_t)
    x0_hat, _ = s.split_prediction(model_output, x_t, t, prediction)
    if clip is not None:
        x0_hat = x0_hat.clamp(-clip, clip)
    mean, posterior_var, log_beta_tilde = s.q_posterior(x0_hat, x_t, t, prev_t)
    if variance == "fixed_small":
        return mean, log_beta_tilde, x0_hat
    alpha_bar, alpha_bar_prev = s.alpha_bars(t, x_t, prev_t)
    # log beta'_t = log(1 - abar_t / abar_prev)
    log_beta = per_sample((1 - alpha_bar / alpha_bar_prev).log(), x_t)
    if variance == "fixed_large":
        return mean, torch.where(posterior_var > 0, log_beta, log_beta_tilde), x0_hat
    # log Sigma = f log beta_t + (1 - f) log beta~_t,  f = (v + 1) / 2      (N&D eq. 15)
    frac = (v + 1) / 2
    return mean, frac * log_beta + (1 - frac) * log_beta_tilde, x0_hat


def _draw_t_and_noise(x0: Tensor, s: NoiseSchedule, t, noise, generator):
    """t ~ U{0, ..., T-1} per sample and eps ~ N(0, I), each unless given."""
    if t is None:
        device = generator.device if generator is not None else x0.device
        t = torch.randint(0, s.T, (x0.shape[0],), generator=generator, device=device).to(x0.device)
    if noise is None:
        noise = noise_like(x0, generator)
    return t, noise


def _target(s: NoiseSchedule, x0: Tensor, t, noise: Tensor, prediction: str) -> Tensor:
    """What the model should output: eps, x0 or v."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS}")
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return s.velocity(x0, t, noise)


def loss_simple(model, x0: Tensor, schedule: NoiseSchedule, *, prediction: str = "eps",
                generator: torch.Generator | None = None, t=None, noise: Tensor | None = None,
                model_kwargs: dict | None = None) -> Tensor:
    """L_simple: the mean squared error to the eps / x0 / v target (Ho et al. Algorithm 1).

    Draws t uniformly and fresh noise from ``generator`` unless ``t`` / ``noise`` are given.
    Returns a scalar: the mean over the batch and every dimension.
    """
    t, noise = _draw_t_and_noise(x0, schedule, t, noise, generator)
    x_t = schedule.q_sample(x0, t, noise)
    target = _target(schedule, x0, t, noise, prediction)
    output = model(x_t, t, **(model_kwargs or {}))
    if output.shape != target.shape:
        raise ValueError(
            f"the model output has shape {tuple(output.shape)} but the {prediction} target has shape "
            f"{tuple(target.shape)} (a learned-variance model trains with loss_hybrid)"
        )
    # L_simple = E || target - model(x_t, t) ||^2
    return F.mse_loss(output, target)


def vlb_terms(s: NoiseSchedule, model_output: Tensor, x0: Tensor, x_t: Tensor, t, *,
              prediction: str = "eps", variance: str = "fixed_small") -> Tensor:
    """The VLB term of timestep t, in bits per dimension, one per sample: shape (B,).

    t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t));
    t = 0: L_0 = -log p(x0 | x_t), the discretised decoder (x_t at t = 0 is Ho et al.'s x_1).
    ``model_output`` is the model's output at (x_t, t).
    """
    if x0.dim() < 2:
        raise ValueError(f"x0 must have a batch dimension and at least one more, got shape {tuple(x0.shape)}")
    true_mean, _, true_log_var = s.q_posterior(x0, x_t, t)
    mean, log_var, _ = p_mean_variance(s, model_output, t, x_t, prediction=prediction, variance=variance)
    kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).mean(1) / math.log(2)  # (B,)
    decoder_nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var).flatten(1).mean(1) / math.log(2)
    t = s.timestep(t, x_t).to(x0.device).expand(x0.shape[0])  # (B,)
    return torch.where(t == 0, decoder_nll, kl)


def prior_bpd(s: NoiseSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x0) || N(0, I)) in bits per dimension, shape (B,). No parameters."""
    alpha_bar = s.alpha_bar[-1]
    # q(x_T | x0) = N(sqrt(abar_T) x0, (1 - abar_T) I)
    mean = alpha_bar.sqrt().item() * x0
    log_var = torch.full_like(x0, math.log(1 - alpha_bar.item()))
    return normal_kl(mean, log_var, 0.0, 0.0).flatten(1).mean(1) / math.log(2)


class VLB(NamedTuple):
    """The variational bound of each sample, in bits per dimension."""

    total: Tensor  # (B,) = terms.sum(1) + prior
    terms: Tensor  # (B, T): column t is the term of timestep t (L_0 in column 0)
    prior: Tensor  # (B,) L_T


@torch.no_grad()
def vlb_bits_per_dim(model, x0: Tensor, schedule: NoiseSchedule, *, prediction: str = "eps",
                     variance: str = "fixed_small", generator: torch.Generator | None = None,
                     model_kwargs: dict | None = None) -> VLB:
    """The full VLB of each sample in bits/dim: every one of the T terms, plus the prior.

    Each term uses its own x_t ~ q(x_t | x0) (fresh noise from ``generator``), so the total is
    an unbiased, single-sample estimate of -ELBO / (D ln 2) (improved-diffusion's calc_bpd_loop).
    Costs T model calls.
    """
    terms = []
    for step in range(schedule.T):
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
        x_t = schedule.q_sample(x0, t, generator=generator)
        output = model(x_t, t, **(model_kwargs or {}))
        terms.append(vlb_terms(schedule, output, x0, x_t, t, prediction=prediction, variance=variance))
    terms = torch.stack(terms, dim=1)  # (B, T)
    prior = prior_bpd(schedule, x0)
    return VLB(total=terms.sum(1) + prior, terms=terms, prior=prior)


def loss_hybrid(model, x0: Tensor, schedule: NoiseSchedule, *, prediction: str = "eps",
                generator: torch.Generator | None = None, t=None, noise: Tensor | None = None,
                model_kwargs: dict | None = None, vlb_weight: float = 1e-3) -> Tensor:
    """L_hybrid = L_simple + 0.001 L_vlb for a learned_range model (Nichol & Dhariwal sec. 3.1).

    The model outputs 2C channels: the eps / x0 / v prediction, then v for the variance.
    L_vlb = sum_t L_t is estimated from the one sampled t as T * L_t (bits/dim), as
    improved-diffusion does (its ``vb * T / 1000``). The VLB term sees the prediction through a
    stop-gradient, so only the variance learns from it; the mean learns from L_simple alone.
    """
    t, noise = _draw_t_and_noise(x0, schedule, t, noise, generator)
    x_t = schedule.q_sample(x0, t, noise)
    output = model(x_t, t, **(model_kwargs or {}))  # (B, 2C, ...)
    prediction_part, v = split_learned_range(output, x_t)
    l_simple = F.mse_loss(prediction_part, _target(schedule, x0, t, noise, prediction))
    # stop-gradient on the mean: the VLB trains only the variance
    frozen = torch.cat([prediction_part.detach(), v], dim=1)  # (B, 2C, ...)
    l_t = vlb_terms(schedule, frozen, x0, x_t, t, prediction=prediction, variance="learned_range")
    # L_hybrid = L_simple + lambda * T * L_t
    return l_simple + vlb_weight * schedule.T * l_t.mean()
