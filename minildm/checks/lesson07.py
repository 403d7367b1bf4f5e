"""Checks for lesson 07 (conditioning and guidance): label dropout, the two guidance rules, diversity.

Label dropout (Ho & Salimans 2022, Algorithm 1) replaces the class by the null class with
probability p_uncond, so one network learns both eps(x_t, c) and eps(x_t) = eps(x_t, null);
with K classes the null class is index K, a class no image has. Classifier-free guidance
(Ho & Salimans, eq. 6) is eps~ = (1 + w) eps(x_t, c) - w eps(x_t), which is diffusers'
eps_u + s (eps_c - eps_u) with s = 1 + w. Classifier guidance (Dhariwal & Nichol 2021,
section 4.2 and Algorithm 2, with the gradient scale s of section 4.3) shifts the noise
prediction against the classifier's gradient:
eps^ = eps - s sqrt(1 - abar_t) grad_x log p_phi(c | x_t). Diversity here is the mean
Euclidean distance between two of N feature vectors, over the N (N - 1) / 2 pairs.

Inputs are drawn so that each slip moves the answer past the tolerance: several drops per
batch and more than one class, guidance weights w away from 0, alpha_bar away from 1/2 (where
sqrt(abar) = sqrt(1 - abar)), scales away from 1, and sets of 3 to 8 feature vectors.
"""

from __future__ import annotations

import math

import torch

from .core import Mistake, compare

__all__ = ["drop_labels", "guided_eps", "diversity", "classifier_guided_eps"]


# ---------------------------------------------------------------------------- drop_labels

def _labels_case(generator: torch.Generator) -> dict:
    null_class = int(torch.randint(3, 11, (), generator=generator))  # K classes, K is the null class
    n = int(torch.randint(8, 17, (), generator=generator))
    y = torch.randint(1, null_class, (n,), generator=generator)  # (n,) never 0, so "dropped to 0" shows
    y[1] = null_class - 1  # the last real class, so a null class one too low shows
    u = torch.rand(n, generator=generator)  # (n,)
    u[0], u[1] = 0.01, 0.99  # at least one drop and one keep
    p = float(0.2 + 0.4 * torch.rand((), generator=generator))
    return {"y": y, "u": u, "p": p, "null_class": null_class}


def _drop_labels_to(target):
    def drop(y, u, p, null_class):
        # y <- target where u < p (probability p), else y
        return torch.where(u < p, torch.full_like(y, target(null_class)), y)
    return drop


def drop_labels(learner) -> None:
    """Check ``learner(y, u, p, null_class)``: each label replaced by ``null_class`` where u < p."""
    __tracebackhide__ = True
    compare(learner, _drop_labels_to(lambda null_class: null_class), _labels_case, name="drop_labels", mistakes=[
        Mistake("labels kept with probability p and dropped with 1 - p",
                lambda y, u, p, null_class: torch.where(u < p, y, torch.full_like(y, null_class)),
                "u is uniform on [0, 1), so u < p happens with probability p: that is when to *drop* the "
                "label (p = 0.1: 10% unconditional)."),
        Mistake("dropped labels set to class 0", _drop_labels_to(lambda null_class: 0),
                "class 0 is a real class (the digit 0); the unconditional model needs a class no image "
                "has: the null class, index K = null_class."),
        Mistake("the null class one too low (K - 1, the last real class)", _drop_labels_to(lambda k: k - 1),
                "with K classes 0 .. K-1 the extra, null class is K itself: the embedding table has K + 1 rows."),
    ], hint="return torch.where(u < p, torch.full_like(y, null_class), y)")


# ---------------------------------------------------------------------------- guided_eps

def _eps_case(generator: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 4, (), generator=generator)), 1, 4, 4)
    w = float(0.5 + 4.5 * torch.rand((), generator=generator))  # w in [0.5, 5], never 0
    return {"eps_u": torch.randn(shape, generator=generator), "eps_c": torch.randn(shape, generator=generator),
            "w": w}


def _guided_eps(eps_u, eps_c, w):
    # eps~ = (1 + w) eps_c - w eps_u       (Ho & Salimans 2022, eq. 6)
    return (1 + w) * eps_c - w * eps_u


def guided_eps(learner) -> None:
    """Check ``learner(eps_u, eps_c, w)``: Ho & Salimans' (1 + w) eps_c - w eps_u, i.e. cfg with s = 1 + w."""
    __tracebackhide__ = True
    compare(learner, _guided_eps, _eps_case, name="guided_eps", mistakes=[
        Mistake("w used as the guidance scale s (eps_u + w (eps_c - eps_u))",
                lambda eps_u, eps_c, w: eps_u + w * (eps_c - eps_u),
                "Ho & Salimans' w and diffusers' guidance scale s differ by one: s = 1 + w. With w = 0 the "
                "result must be eps_c (the conditional model), not eps_u."),
        Mistake("eps_c and eps_u swapped", lambda eps_u, eps_c, w: (1 + w) * eps_u - w * eps_c,
                "guidance pushes *towards* the class: (1 + w) times the conditional prediction eps_c, minus "
                "w times the unconditional eps_u."),
        Mistake("the unconditional term left out ((1 + w) eps_c)", lambda eps_u, eps_c, w: (1 + w) * eps_c,
                "scaling eps_c alone only rescales the noise estimate; guidance is the *difference* "
                "eps_c - eps_u: (1 + w) eps_c - w eps_u."),
    ], hint="return (1 + w) * eps_c - w * eps_u")


# ---------------------------------------------------------------------------- diversity

def _features_case(generator: torch.Generator) -> dict:
    n, d = int(torch.randint(3, 9, (), generator=generator)), int(torch.randint(2, 9, (), generator=generator))
    scale = torch.rand(d, generator=generator) * 2 + 0.2  # features with different spreads
    return {"features": torch.randn(n, d, generator=generator) * scale}


def _diversity(features):
    # mean over pairs i < j of ||f_i - f_j||
    return float(torch.pdist(features.double()).mean())


def diversity(learner) -> None:
    """Check ``learner(features)``: (N, D) -> the mean distance ||f_i - f_j|| over the N (N - 1) / 2 pairs, a float."""
    __tracebackhide__ = True
    compare(learner, _diversity, _features_case, name="diversity", mistakes=[
        Mistake("the N zero distances of each sample to itself averaged in",
                lambda features: float(torch.cdist(features.double(), features.double()).mean()),
                "a sample is not a pair with itself: average over i != j only, N (N - 1) terms (or the "
                "N (N - 1) / 2 pairs i < j, which gives the same mean; torch.pdist lists them)."),
        Mistake("squared distances", lambda features: float(torch.pdist(features.double()).pow(2).mean()),
                "take the Euclidean distance ||f_i - f_j|| itself, not its square."),
        Mistake("the mean distance to the centroid instead of between pairs",
                lambda features: float((features.double() - features.double().mean(0)).norm(dim=1).mean()),
                "compare the samples with each other, ||f_i - f_j|| for every pair, not with their mean."),
        Mistake("the standard deviation of all feature values", lambda features: float(features.double().std()),
                "diversity is a distance between whole feature vectors: ||f_i - f_j|| over pairs of rows."),
    ], hint="return torch.pdist(features).mean().item()  (or average (features[i] - features[j]).norm() over i < j)")


# ---------------------------------------------------------------------------- classifier_guided_eps

def _classifier_case(generator: torch.Generator) -> dict:
    shape = (int(torch.randint(1, 4, (), generator=generator)), 1, 4, 4)
    alpha_bar_t = float(0.05 + 0.3 * torch.rand((), generator=generator))  # far from 1/2
    if torch.rand((), generator=generator) < 0.5:
        alpha_bar_t = 1 - alpha_bar_t
    scale = float(1.5 + 8 * torch.rand((), generator=generator))  # never 1
    return {"eps": torch.randn(shape, generator=generator), "grad_log_prob": torch.randn(shape, generator=generator),
            "alpha_bar_t": alpha_bar_t, "scale": scale}


def _classifier_guided_with(coefficient=lambda alpha_bar_t: math.sqrt(1 - alpha_bar_t), sign=-1.0, scaled=True):
    def guided(eps, grad_log_prob, alpha_bar_t, scale):
        # eps^ = eps - s sqrt(1 - abar_t) grad log p(c | x_t)      (Dhariwal & Nichol 2021, section 4.2)
        return eps + sign * (scale if scaled else 1.0) * coefficient(alpha_bar_t) * grad_log_prob
    return guided


def classifier_guided_eps(learner) -> None:
    """Check ``learner(eps, grad_log_prob, alpha_bar_t, scale)``: eps - scale sqrt(1 - abar_t) grad_log_prob."""
    __tracebackhide__ = True
    compare(learner, _classifier_guided_with(), _classifier_case, name="classifier_guided_eps", mistakes=[
        Mistake("the gradient added instead of subtracted", _classifier_guided_with(sign=1.0),
                "eps points *away* from the data (score = -eps / sqrt(1 - abar)), so raising log p(c | x) "
                "means subtracting its gradient from eps."),
        Mistake("(1 - alpha_bar) without the square root", _classifier_guided_with(coefficient=lambda a: 1 - a),
                "eps = -sqrt(1 - abar_t) * score: the factor is the noise's standard deviation sqrt(1 - abar_t)."),
        Mistake("sqrt(alpha_bar) instead of sqrt(1 - alpha_bar)",
                _classifier_guided_with(coefficient=lambda a: math.sqrt(a)),
                "the factor that turns a score into a noise prediction is the noise's standard deviation, "
                "sqrt(1 - abar_t)."),
        Mistake("the guidance scale left out", _classifier_guided_with(scaled=False),
                "multiply the classifier's gradient by the scale s: it samples from p(x) p(c | x)^s."),
    ], hint="return eps - scale * math.sqrt(1 - alpha_bar_t) * grad_log_prob")
