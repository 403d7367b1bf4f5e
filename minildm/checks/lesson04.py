"""Checks for lesson 04 (training a DDPM): the training loss, one sampling step, the EMA update.

Ho et al. (2020) train with Algorithm 1: draw x0, t ~ U{1..T} and eps ~ N(0, I), and take a
gradient step on ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2 (line 5).
They sample with Algorithm 2: from x_T ~ N(0, I), for t = T ... 1,
x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(alpha_t) + sigma_t z,
with z = 0 on the last step (line 4). Arrays are indexed 0 ... T-1 as in the code, so the last
step is t = 0. Diffusion models are sampled from an exponential moving average of the weights.

Inputs use short schedules with large betas (0.02 to 0.4) so that each slip (an off-by-one in
t, a variance used as a standard deviation, a missing square root) moves the answer well past
the tolerance.
"""

from __future__ import annotations

import torch
from torch import nn

from ..samplers import ddpm_step as _package_ddpm_step
from ..schedules import NoiseSchedule
from .core import Mistake, compare

__all__ = ["training_loss", "ddpm_step", "ema_update"]


def _random_betas(generator: torch.Generator) -> torch.Tensor:
    """A short increasing schedule, T in [4, 20), betas in [0.02, 0.4], float32."""
    T = int(torch.randint(4, 20, (), generator=generator))
    betas = 0.02 + 0.38 * torch.rand(T, generator=generator, dtype=torch.float64)
    return betas.sort().values.float()  # (T,)


def _points(generator: torch.Generator) -> torch.Tensor:
    B = int(torch.randint(3, 7, (), generator=generator))
    return torch.randn(B, 2, generator=generator) * 1.5  # (B, 2)


class _ProbeModel(nn.Module):
    """A fixed stand-in for eps_theta(x_t, t): a linear map of x_t plus a term in t, so a wrong
    input (x0 for x_t) or a wrong timestep changes its output."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 2, generator=generator))
        self.time = nn.Parameter(torch.randn(2, generator=generator))

    def forward(self, x_t: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t).float().reshape(-1, 1)  # (B, 1) or (1, 1)
        return x_t @ self.weight + torch.sin(0.7 * t + 0.3) * self.time  # (B, 2)


# ---------------------------------------------------------------------------- training_loss

def _abar(alpha_bar: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return alpha_bar[t].view(-1, 1)  # (B, 1)


def _training_loss(model, x0, t, noise, alpha_bar):
    abar = _abar(alpha_bar, t)
    # x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps;   L = mean ||eps - eps_theta(x_t, t)||^2
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return (noise - model(x_t, t)).pow(2).mean()


def _loss_case(generator: torch.Generator) -> dict:
    alpha_bar = torch.cumprod(1 - _random_betas(generator), 0)  # (T,)
    x0 = _points(generator)
    t = torch.randint(len(alpha_bar), (len(x0),), generator=generator)  # (B,)
    t[0] = 0
    return {"model": _ProbeModel(generator), "x0": x0, "t": t, "alpha_bar": alpha_bar,
            "noise": torch.randn(x0.shape, generator=generator)}


def _loss_x0_target(model, x0, t, noise, alpha_bar):
    abar = _abar(alpha_bar, t)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return (x0 - model(x_t, t)).pow(2).mean()


def _loss_no_sqrt(model, x0, t, noise, alpha_bar):
    abar = _abar(alpha_bar, t)
    return (noise - model(abar * x0 + (1 - abar) * noise, t)).pow(2).mean()


def _loss_previous_t(model, x0, t, noise, alpha_bar):
    return _training_loss(model, x0, t - 1, noise, alpha_bar)


def _loss_model_sees_x0(model, x0, t, noise, alpha_bar):
    return (noise - model(x0, t)).pow(2).mean()


def _loss_model_sees_t_minus_1(model, x0, t, noise, alpha_bar):
    abar = _abar(alpha_bar, t)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return (noise - model(x_t, t - 1)).pow(2).mean()


def _loss_not_squared(model, x0, t, noise, alpha_bar):
    abar = _abar(alpha_bar, t)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    return (noise - model(x_t, t)).abs().mean()


def _loss_swapped(model, x0, t, noise, alpha_bar):
    abar = _abar(alpha_bar, t)
    return (noise - model((1 - abar).sqrt() * x0 + abar.sqrt() * noise, t)).pow(2).mean()


def training_loss(learner) -> None:
    """Check ``learner(model, x0, t, noise, alpha_bar)``: L_simple for given t and noise (Algorithm 1, line 5)."""
    __tracebackhide__ = True
    compare(learner, _training_loss, _loss_case, name="training_loss", mistakes=[
        Mistake("x0 used as the target", _loss_x0_target,
                "the model is trained to predict the noise: compare model(x_t, t) with noise, not with x0."),
        Mistake("no square roots in x_t", _loss_no_sqrt,
                "x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise: both coefficients are square roots."),
        Mistake("signal and noise coefficients swapped", _loss_swapped,
                "alpha_bar_t is the fraction of signal kept: x0 gets sqrt(alpha_bar_t), the noise sqrt(1 - alpha_bar_t)."),
        Mistake("off by one in t (alpha_bar[t - 1])", _loss_previous_t,
                "arrays are 0-indexed: the sample at timestep t uses alpha_bar[t]."),
        Mistake("the model shown x0 instead of x_t", _loss_model_sees_x0,
                "the model never sees clean data: feed it the noised x_t (and t)."),
        Mistake("the model told the wrong timestep (t - 1)", _loss_model_sees_t_minus_1,
                "call model(x_t, t) with the same t that made x_t."),
        Mistake("absolute error instead of squared error", _loss_not_squared,
                "L_simple is a mean *squared* error: (noise - eps_hat) ** 2, then .mean()."),
    ], hint="abar = alpha_bar[t].view(-1, 1); x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise; "
            "return ((noise - model(x_t, t)) ** 2).mean()")


# ---------------------------------------------------------------------------- ddpm_step

def _ddpm_step(eps_hat, t, x_t, betas, noise):
    # Algorithm 2, line 4 with sigma_t^2 = beta_t (minildm's variance="fixed_large"); z = 0 at t = 0
    x_prev, _ = _package_ddpm_step(NoiseSchedule(betas.double()), eps_hat, t, x_t, noise=noise,
                                   variance="fixed_large")
    return x_prev


def _step_case(generator: torch.Generator) -> dict:
    betas = _random_betas(generator)
    x_t = _points(generator)
    t = 0 if torch.rand((), generator=generator) < 0.3 else int(torch.randint(1, len(betas), (), generator=generator))
    return {"eps_hat": torch.randn(x_t.shape, generator=generator), "t": t, "x_t": x_t, "betas": betas,
            "noise": torch.randn(x_t.shape, generator=generator)}


def _step_parts(t, betas):
    alphas = 1 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    return betas[t], alphas[t], alpha_bar[t], (alpha_bar[t - 1] if t > 0 else torch.ones(()))


def _mean(eps_hat, x_t, beta, alpha, abar):
    # mu = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t)
    return (x_t - beta / (1 - abar).sqrt() * eps_hat) / alpha.sqrt()


def _step_with(sigma_of, noise_at_zero=False, mean_of=_mean, shift=0):
    """A DDPM step built from its parts, for the mistakes below."""
    def step(eps_hat, t, x_t, betas, noise):
        beta, alpha, abar, abar_prev = _step_parts(t - shift, betas)
        mean = mean_of(eps_hat, x_t, beta, alpha, abar)
        if t == 0 and not noise_at_zero:
            return mean
        return mean + sigma_of(beta, abar, abar_prev) * noise
    return step


def _sqrt_beta(beta, abar, abar_prev):
    return beta.sqrt()


def _sqrt_beta_tilde(beta, abar, abar_prev):
    # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
    return ((1 - abar_prev) / (1 - abar) * beta).sqrt()


def ddpm_step(learner) -> None:
    """Check ``learner(eps_hat, t, x_t, betas, noise)``: x_{t-1} by Algorithm 2, line 4, sigma_t^2 = beta_t."""
    __tracebackhide__ = True
    compare(learner, _ddpm_step, _step_case, name="ddpm_step", mistakes=[
        Mistake("sigma_t^2 = beta~_t (the posterior variance, fixed_small) instead of beta_t",
                _step_with(_sqrt_beta_tilde),
                "that is the lesson's sampler (minildm's default); this exercise asks for Ho et al.'s other "
                "choice, sigma_t = sqrt(betas[t])."),
        Mistake("beta_t used as the standard deviation", _step_with(lambda beta, abar, abar_prev: beta),
                "sigma_t^2 = beta_t is a variance: the noise is scaled by sigma_t = sqrt(beta_t)."),
        Mistake("noise added on the last step (t = 0)", _step_with(_sqrt_beta, noise_at_zero=True),
                "Algorithm 2 sets z = 0 on the step that lands on x0 (array index t = 0): return the mean there."),
        Mistake("off by one in t (betas[t - 1], alpha_bar[t - 1])", _step_with(_sqrt_beta, shift=1),
                "arrays are 0-indexed: the step from x_t uses betas[t] and alpha_bar[t]."),
        Mistake("1 / alpha_t instead of 1 / sqrt(alpha_t)",
                _step_with(_sqrt_beta, mean_of=lambda e, x, b, a, ab: (x - b / (1 - ab).sqrt() * e) / a),
                "the mean divides by sqrt(alpha_t): a square root is missing."),
        Mistake("beta_t / (1 - alpha_bar_t) instead of beta_t / sqrt(1 - alpha_bar_t)",
                _step_with(_sqrt_beta, mean_of=lambda e, x, b, a, ab: (x - b / (1 - ab) * e) / a.sqrt()),
                "the noise estimate is scaled by beta_t / sqrt(1 - alpha_bar_t): a square root is missing."),
        Mistake("alpha_bar_t instead of alpha_t in 1 / sqrt(alpha_t)",
                _step_with(_sqrt_beta, mean_of=lambda e, x, b, a, ab: (x - b / (1 - ab).sqrt() * e) / ab.sqrt()),
                "one step back divides by sqrt(alpha_t) = sqrt(1 - beta_t), not by sqrt(alpha_bar_t): that "
                "would undo all t steps at once."),
        Mistake("the noise estimate added instead of subtracted",
                _step_with(_sqrt_beta, mean_of=lambda e, x, b, a, ab: (x + b / (1 - ab).sqrt() * e) / a.sqrt()),
                "the mean removes the predicted noise: x_t - beta_t / sqrt(1 - alpha_bar_t) * eps_hat."),
    ], hint="alphas = 1 - betas; alpha_bar = torch.cumprod(alphas, 0); mean = (x_t - betas[t] / (1 - alpha_bar[t]).sqrt() "
            "* eps_hat) / alphas[t].sqrt(); add betas[t].sqrt() * noise only when t > 0")


# ---------------------------------------------------------------------------- ema_update

def _ema_update(ema_params, params, decay):
    # ema <- decay * ema + (1 - decay) * theta
    return [decay * e + (1 - decay) * p for e, p in zip(ema_params, params)]


def _ema_case(generator: torch.Generator) -> dict:
    shapes = [(3, 2), (4,), (2, 2, 2)][: int(torch.randint(1, 4, (), generator=generator))]
    decay = float(torch.empty(()).uniform_(0.5, 0.95, generator=generator))
    return {"ema_params": [torch.randn(s, generator=generator) for s in shapes],
            "params": [torch.randn(s, generator=generator) for s in shapes], "decay": decay}


def ema_update(learner) -> None:
    """Check ``learner(ema_params, params, decay)``: the new EMA weights, one tensor per parameter."""
    __tracebackhide__ = True
    compare(learner, _ema_update, _ema_case, name="ema_update", mistakes=[
        Mistake("decay and 1 - decay swapped (or the average and the weights)",
                lambda ema_params, params, decay: _ema_update(ema_params, params, 1 - decay),
                "the average changes slowly: the old *average* keeps the weight `decay` (close to 1) and the "
                "current weights get only 1 - decay: decay * ema + (1 - decay) * param."),
        Mistake("the weights copied (no averaging)", lambda ema_params, params, decay: [p.clone() for p in params],
                "an EMA mixes the old average with the new weights: decay * ema + (1 - decay) * param."),
        Mistake("the average left unchanged", lambda ema_params, params, decay: [e.clone() for e in ema_params],
                "each update must move the average a little towards the current weights."),
    ], hint="return [decay * e + (1 - decay) * p for e, p in zip(ema_params, params)]")
