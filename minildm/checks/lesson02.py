"""Checks for lesson 02 (noise schedules): log-SNR and back, the cosine schedule, zero terminal SNR.

A schedule is best read through its signal-to-noise ratio SNR = alpha_bar / (1 - alpha_bar)
(Kingma et al. 2021), whose log lambda maps back to alpha_bar = sigmoid(lambda). The cosine
schedule is Nichol & Dhariwal (2021, eq. 17); the rescale to zero terminal SNR is Lin et al.
(2023, Algorithm 1).
"""

from __future__ import annotations

import math

import torch

from ..schedules import SCHEDULES, make_betas, rescale_zero_terminal_snr as _rescale_zero_terminal_snr
from .core import Mistake, compare

__all__ = ["log_snr", "alpha_bar_from_log_snr", "cosine_betas", "rescale_zero_terminal_snr"]


# ---------------------------------------------------------------------------- log_snr

def _log_snr(alpha_bar):
    # lambda = log(abar / (1 - abar))
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def _alpha_bar_case(generator: torch.Generator) -> dict:
    n = int(torch.randint(3, 12, (), generator=generator))
    dtype = torch.float64 if torch.rand((), generator=generator) < 0.5 else torch.float32
    alpha_bar = (0.001 + 0.998 * torch.rand(n, generator=generator, dtype=torch.float64)).to(dtype)  # (n,)
    alpha_bar[0] = 0.0  # zero terminal SNR: lambda = -inf
    return {"alpha_bar": alpha_bar}


def log_snr(learner) -> None:
    """Check ``learner(alpha_bar)``: lambda = log(alpha_bar / (1 - alpha_bar)), -inf at alpha_bar = 0."""
    __tracebackhide__ = True
    compare(learner, _log_snr, _alpha_bar_case, name="log_snr", mistakes=[
        Mistake("the log of the noise-to-signal ratio", lambda alpha_bar: -_log_snr(alpha_bar),
                "SNR is signal power over noise power: alpha_bar on top, 1 - alpha_bar below."),
        Mistake("the log of the amplitude ratio sqrt(abar) / sqrt(1 - abar)", lambda alpha_bar: _log_snr(alpha_bar) / 2,
                "SNR compares powers (variances): alpha_bar / (1 - alpha_bar), without square roots."),
        Mistake("log base 10", lambda alpha_bar: _log_snr(alpha_bar) / math.log(10),
                "use the natural log, torch.log (lambda in nats, as in Kingma et al.)."),
        Mistake("the SNR itself, not its log", lambda alpha_bar: alpha_bar / (1 - alpha_bar),
                "the exercise asks for log(SNR)."),
        Mistake("log(alpha_bar) only", lambda alpha_bar: torch.log(alpha_bar),
                "the noise power counts too: subtract log(1 - alpha_bar)."),
    ], hint="lambda = log(alpha_bar) - log(1 - alpha_bar); at alpha_bar = 0 that is -inf, which is right")


# ---------------------------------------------------------------------------- alpha_bar_from_log_snr

def _alpha_bar_from_log_snr(lam):
    # abar = SNR / (1 + SNR) = 1 / (1 + exp(-lambda)) = sigmoid(lambda)
    return torch.sigmoid(lam)


def _log_snr_case(generator: torch.Generator) -> dict:
    n = int(torch.randint(4, 12, (), generator=generator))
    lam = torch.empty(n).uniform_(-15, 15, generator=generator)  # (n,) float32
    lam[0], lam[1] = 100.0, -100.0  # exp(100) overflows float32: a naive formula gives inf / inf
    return {"lam": lam}


def _naive_sigmoid(lam):
    return torch.exp(lam) / (1 + torch.exp(lam))


def alpha_bar_from_log_snr(learner) -> None:
    """Check ``learner(lam)``: the alpha_bar whose log-SNR is lam, sigmoid(lam)."""
    __tracebackhide__ = True
    compare(learner, _alpha_bar_from_log_snr, _log_snr_case, name="alpha_bar_from_log_snr", mistakes=[
        Mistake("exp(lambda): the SNR, not alpha_bar", lambda lam: torch.exp(lam),
                "exp(lambda) is the SNR = abar / (1 - abar); solve that for abar: SNR / (1 + SNR)."),
        Mistake("the sign of lambda flipped", lambda lam: torch.sigmoid(-lam),
                "large lambda means much signal, so alpha_bar near 1: sigmoid(lambda), not sigmoid(-lambda)."),
        Mistake("sqrt(alpha_bar), the signal amplitude", lambda lam: torch.sigmoid(lam).sqrt(),
                "the exercise asks for alpha_bar itself, not its square root."),
        Mistake("sigmoid(lambda / 2)", lambda lam: torch.sigmoid(lam / 2),
                "lambda is the log of a power ratio; no halving: alpha_bar = sigmoid(lambda)."),
    ], hint="abar = exp(lambda) / (1 + exp(lambda)) = 1 / (1 + exp(-lambda)); exp(lambda) overflows "
            "for large lambda (inf / inf = NaN), so use torch.sigmoid(lam)")


# ---------------------------------------------------------------------------- cosine_betas

def _cosine_betas(T, s=0.008, max_beta=0.999):
    u = torch.arange(T + 1, dtype=torch.float64) / T  # (T + 1,)
    # abar(u) = cos^2(((u + s) / (1 + s)) * pi / 2)
    alpha_bar = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    # beta_t = min(1 - abar(t + 1) / abar(t), max_beta)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)  # (T,)


def _cosine_case(generator: torch.Generator) -> dict:
    T = [3, 10, 50, 1000][int(torch.randint(4, (), generator=generator))]
    s = [0.008, 0.0, 0.02][int(torch.randint(3, (), generator=generator))]
    max_beta = [0.999, 0.5][int(torch.randint(2, (), generator=generator))]
    return {"T": T, "s": s, "max_beta": max_beta}


def _cosine_variant(T, s, max_beta, *, power=2, angle=math.pi / 2, clamp=True, alpha_bar_out=False):
    u = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((u + s) / (1 + s) * angle) ** power
    if alpha_bar_out:
        return f[1:] / f[0]
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta) if clamp else betas


def cosine_betas(learner) -> None:
    """Check ``learner(T, s, max_beta)``: Nichol & Dhariwal's cosine betas, float64, shape (T,)."""
    __tracebackhide__ = True
    compare(learner, _cosine_betas, _cosine_case, name="cosine_betas", n_cases=12, mistakes=[
        Mistake("no cap at max_beta", lambda T, s, max_beta: _cosine_variant(T, s, max_beta, clamp=False),
                "the last beta is 1 (alpha_bar(1) = 0); clamp the betas to at most max_beta."),
        Mistake("cos instead of cos squared", lambda T, s, max_beta: _cosine_variant(T, s, max_beta, power=1),
                "alpha_bar(u) = cos(...) ** 2: sqrt(alpha_bar), the signal amplitude, is the cosine."),
        Mistake("the offset s left out", lambda T, s, max_beta: _cosine_variant(T, 0.0, max_beta),
                "the angle is (u + s) / (1 + s) * pi / 2; s keeps the first betas from being vanishingly small."),
        Mistake("pi instead of pi / 2", lambda T, s, max_beta: _cosine_variant(T, s, max_beta, angle=math.pi),
                "the angle runs from about 0 to pi / 2, where cos^2 reaches 0; with pi it goes back up."),
        Mistake("alpha_bar instead of the betas",
                lambda T, s, max_beta: _cosine_variant(T, s, max_beta, alpha_bar_out=True),
                "turn alpha_bar into betas: beta_t = 1 - alpha_bar(t + 1) / alpha_bar(t), then clamp."),
    ], hint="u = torch.arange(T + 1, dtype=torch.float64) / T, f = cos((u + s) / (1 + s) * pi / 2) ** 2, "
            "betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)")


# ---------------------------------------------------------------------------- rescale_zero_terminal_snr

def _schedule_case(generator: torch.Generator) -> dict:
    name = SCHEDULES[int(torch.randint(len(SCHEDULES), (), generator=generator))]
    T = int(torch.randint(3, 60, (), generator=generator))
    return {"betas": make_betas(name, T, beta_start=0.01, beta_end=0.2)}


def _rescale_sqrt_free(betas):
    alpha_bar = torch.cumprod(1 - betas, 0)
    first, last = alpha_bar[0].clone(), alpha_bar[-1].clone()
    alpha_bar = (alpha_bar - last) * first / (first - last)
    return 1 - torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])


def _rescale_shift_only(betas):
    sqrt_alpha_bar = torch.cumprod(1 - betas, 0).sqrt()
    alpha_bar = (sqrt_alpha_bar - sqrt_alpha_bar[-1]) ** 2
    return 1 - torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])


def _rescale_alpha_bar_out(betas):
    return torch.cumprod(1 - _rescale_zero_terminal_snr(betas), 0)


def _rescale_first_alpha_one(betas):
    rescaled = _rescale_zero_terminal_snr(betas)
    return torch.cat([torch.zeros(1, dtype=betas.dtype), rescaled[1:]])


def rescale_zero_terminal_snr(learner) -> None:
    """Check ``learner(betas)``: Lin et al.'s rescale, so alpha_bar[-1] = 0 and alpha_bar[0] is unchanged."""
    __tracebackhide__ = True
    compare(learner, _rescale_zero_terminal_snr, _schedule_case, name="rescale_zero_terminal_snr", mistakes=[
        Mistake("alpha_bar shifted and scaled instead of sqrt(alpha_bar)", _rescale_sqrt_free,
                "Lin et al. shift and scale sqrt(alpha_bar), the signal amplitude, and square afterwards."),
        Mistake("shifted but not stretched back", _rescale_shift_only,
                "after subtracting the last value, multiply by sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_T)) so "
                "the first value is unchanged."),
        Mistake("alpha_bar returned instead of the betas", _rescale_alpha_bar_out,
                "turn the new alpha_bar back into betas: alpha_t = abar_t / abar_{t-1}, beta_t = 1 - alpha_t."),
        Mistake("the first beta set to 0", _rescale_first_alpha_one,
                "alpha_0 = abar_0 (there is no abar_{-1}), so beta_0 = 1 - abar_0, the same as before."),
    ], hint="s = sqrt(cumprod(1 - betas)); s = (s - s[-1]) * s[0] / (s[0] - s[-1]) (clone s[0] and s[-1] "
            "first); abar = s ** 2; alphas = cat([abar[:1], abar[1:] / abar[:-1]]); return 1 - alphas")
