"""The lesson 06 checks accept right answers written in other ways and refuse plausible wrong ones.

tests/test_lesson_checks.py already submits every listed Mistake; here the right answers a
learner may write differently from the reference (floats or tensors, float32 arithmetic, a list
comprehension) must pass, and wrong answers that are not listed must still fail.
"""

import math

import pytest
import torch

from minildm.checks import CheckFailed
from minildm.checks import lesson06 as L6


def test_ddim_sigma_accepts_one_square_root_and_refuses_a_missing_eta():
    L6.ddim_sigma(lambda alpha_bar_t, alpha_bar_prev, eta:
                  eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)))
    with pytest.raises(CheckFailed):  # eta forgotten: right only at eta = 1, which the cases avoid
        L6.ddim_sigma(lambda alpha_bar_t, alpha_bar_prev, eta:
                      ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt())


def test_ddim_step_by_hand_accepts_float_arithmetic_and_refuses_an_eps_sign_slip():
    def step(x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise):
        sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev))
        x0_hat = (x_t - math.sqrt(1 - alpha_bar_t) * eps) / math.sqrt(alpha_bar_t)
        return math.sqrt(alpha_bar_prev) * x0_hat + math.sqrt(1 - alpha_bar_prev - sigma**2) * eps + sigma * noise

    L6.ddim_step_by_hand(step)
    with pytest.raises(CheckFailed):
        L6.ddim_step_by_hand(lambda x_t, eps, alpha_bar_t, alpha_bar_prev, eta, noise:
                             step(x_t, -eps, alpha_bar_t, alpha_bar_prev, eta, noise))


def test_trailing_timesteps_accepts_python_round_and_float32_and_refuses_linspace():
    L6.trailing_timesteps(lambda T, steps: torch.tensor([round(T - i * T / steps) - 1 for i in range(steps)]))
    L6.trailing_timesteps(lambda T, steps: torch.round(T - torch.arange(steps) * T / steps).long() - 1)
    with pytest.raises(CheckFailed):
        L6.trailing_timesteps(lambda T, steps: torch.linspace(T - 1, 0, steps).round().long())


def test_slerp_accepts_unit_vector_form_and_refuses_a_normalised_lerp():
    def slerp_unit(z0, z1, alpha):
        u0, u1 = z0 / z0.norm(), z1 / z1.norm()
        theta = torch.acos((u0 * u1).sum())
        return (torch.sin((1 - alpha) * theta) * z0 + torch.sin(alpha * theta) * z1) / torch.sin(theta)

    L6.slerp(slerp_unit)
    with pytest.raises(CheckFailed):  # a lerp rescaled to the mean norm: close, but not the great circle
        L6.slerp(lambda z0, z1, alpha: ((1 - alpha) * z0 + alpha * z1) / ((1 - alpha) * z0 + alpha * z1).norm()
                 * ((1 - alpha) * z0.norm() + alpha * z1.norm()))


@pytest.mark.parametrize("check", [L6.ddim_sigma, L6.ddim_step_by_hand, L6.trailing_timesteps, L6.slerp])
def test_an_unwritten_exercise_raises_not_implemented_error(check):
    def unwritten(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):
        check(unwritten)
