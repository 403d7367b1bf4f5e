"""minildm.schedules: beta schedules, the forward process, the posterior, eps / x0 / v."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minildm import schedules
from minildm.schedules import NoiseSchedule, make_betas, rescale_zero_terminal_snr

LINEAR = NoiseSchedule(make_betas("linear", 1000))


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same random inputs on every run."""
    torch.manual_seed(0)


def abar_by_hand(betas, t):
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), as a Python float product."""
    return math.prod(1 - b for b in betas[: t + 1].tolist())


# ---------------------------------------------------------------- schedules


def test_named_schedules_follow_their_formulas():
    T = 7
    linear = torch.tensor([0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4], dtype=torch.float64)
    assert torch.allclose(make_betas("linear", T, 0.1, 0.4), linear)
    root = [math.sqrt(0.01) + i * (math.sqrt(0.04) - math.sqrt(0.01)) / (T - 1) for i in range(T)]
    assert torch.allclose(make_betas("scaled_linear", T, 0.01, 0.04), torch.tensor(root, dtype=torch.float64) ** 2)
    ramp = [1 / (1 + math.exp(-(-6 + 12 * i / (T - 1)))) for i in range(T)]
    expected = [r * (0.04 - 0.01) + 0.01 for r in ramp]
    assert torch.allclose(make_betas("sigmoid", T, 0.01, 0.04), torch.tensor(expected, dtype=torch.float64))
    for name in schedules.SCHEDULES:
        assert make_betas(name, T).dtype == torch.float64


def test_cosine_alpha_bar_is_the_squared_cosine_until_the_cap():
    # abar_t = f(t + 1) / f(0) with f(u) = cos^2((u/T + s)/(1 + s) pi/2), wherever beta < 0.999
    T = 1000
    s = NoiseSchedule(make_betas("cosine", T))
    f = [math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(T + 1)]
    uncapped = s.betas < 0.999
    assert uncapped[:-1].all() and not uncapped[-1]  # only the very last beta hits the cap
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T)], dtype=torch.float64)
    assert torch.allclose(s.alpha_bar[:-1], expected[:-1], rtol=1e-10)
    assert s.betas[-1] == 0.999


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(schedules.SCHEDULES), T=st.integers(1, 2000))
def test_alpha_bar_is_strictly_decreasing_in_the_unit_interval(name, T):
    s = NoiseSchedule(make_betas(name, T))
    assert ((s.alpha_bar > 0) & (s.alpha_bar <= 1)).all()
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()


def test_derived_attributes():
    s = NoiseSchedule(make_betas("linear", 50, 1e-3, 0.2))
    assert s.T == 50 and all(v.shape == (50,) for v in (s.betas, s.alphas, s.alpha_bar, s.alpha_bar_prev, s.snr))
    assert torch.equal(s.alphas, 1 - s.betas)
    for t in (0, 1, 17, 49):
        assert s.alpha_bar[t].item() == pytest.approx(abar_by_hand(s.betas, t), rel=1e-12)
        assert s.snr[t].item() == pytest.approx(s.alpha_bar[t].item() / (1 - s.alpha_bar[t].item()), rel=1e-12)
    assert s.alpha_bar_prev[0] == 1 and torch.equal(s.alpha_bar_prev[1:], s.alpha_bar[:-1])


def test_betas_given_as_a_float32_list_are_stored_in_float64():
    s = NoiseSchedule([0.1, 0.2, 0.3])
    assert s.betas.dtype == torch.float64 and s.T == 3
    s32 = NoiseSchedule(torch.tensor([0.1, 0.2], dtype=torch.float32))
    assert s32.alpha_bar.dtype == torch.float64


# ---------------------------------------------------------------- zero terminal SNR


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine"])
def test_zero_terminal_snr_shifts_and_scales_sqrt_alpha_bar(name):
    betas = make_betas(name, 200, 0.00085, 0.012)
    old = torch.cumprod(1 - betas, 0).sqrt()
    rescaled = rescale_zero_terminal_snr(betas)
    s = NoiseSchedule(rescaled)
    new = s.alpha_bar.sqrt()
    assert s.alpha_bar[-1] == 0 and rescaled[-1] == 1 and s.snr[-1] == 0
    assert new[0].item() == pytest.approx(old[0].item(), rel=1e-12)
    # Algorithm 1: the new sqrt(abar) is an affine function of the old one
    slope = (new[0] - new[-1]) / (old[0] - old[-1])
    assert torch.allclose(new, new[-1] + slope * (old - old[-1]), atol=1e-12)


def test_zero_terminal_snr_keeps_the_input_dtype():
    betas = make_betas("linear", 100).float()
    assert rescale_zero_terminal_snr(betas).dtype == torch.float32


def test_eps_prediction_is_refused_where_alpha_bar_is_zero():
    s = NoiseSchedule(rescale_zero_terminal_snr(make_betas("scaled_linear", 100, 0.00085, 0.012)))
    x_t, out = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="zero terminal SNR.*prediction='v'"):
        s.split_prediction(out, x_t, 99, prediction="eps")
    with pytest.raises(ValueError, match="zero terminal SNR"):
        s.split_prediction(out, x_t, torch.tensor([5, 99]), prediction="eps")
    # v-prediction is fine there: x_T is pure noise, so x0 = -v and eps = x_T
    x0_hat, eps_hat = s.split_prediction(out, x_t, 99, prediction="v")
    assert torch.allclose(x0_hat, -out) and torch.allclose(eps_hat, x_t)
    x0_hat, eps_hat = s.split_prediction(out, x_t, 98, prediction="eps")
    assert torch.isfinite(x0_hat).all()


# ---------------------------------------------------------------- forward process


def test_q_sample_uses_alpha_bar_per_sample():
    betas = LINEAR.betas
    x0, noise = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.randn(4, 2, 3, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    x_t = LINEAR.q_sample(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        a = abar_by_hand(betas, ti)
        assert torch.allclose(x_t[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i], atol=1e-12)
        assert torch.equal(LINEAR.q_sample(x0[i : i + 1], ti, noise[i : i + 1]), x_t[i : i + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_outputs_follow_the_input_dtype(dtype):
    x0, noise = torch.randn(3, 4, dtype=dtype), torch.randn(3, 4, dtype=dtype)
    t = torch.tensor([1, 2, 3])
    assert LINEAR.q_sample(x0, t, noise).dtype == dtype
    assert LINEAR.velocity(x0, t, noise).dtype == dtype
    assert all(v.dtype == dtype for v in LINEAR.split_prediction(noise, x0, t, "v"))
    assert all(v.dtype == dtype for v in LINEAR.q_posterior(x0, noise, t))


def test_float32_inputs_compute_in_float32_as_diffusers_and_float64_inputs_exactly():
    # alpha_bar_1 = (1 - beta_0)(1 - beta_1) with each operation rounded to float32, as diffusers does
    b0, b1 = LINEAR.betas[:2].numpy().astype(np.float32)
    one = np.float32(1)
    sqrt_one_minus_abar32 = np.sqrt(one - (one - b0) * (one - b1))
    exact = math.sqrt(1 - abar_by_hand(LINEAR.betas, 1))
    zeros, ones = torch.zeros(2, 3), torch.ones(2, 3)
    ours32 = LINEAR.q_sample(zeros, 1, ones)  # sqrt(1 - abar_1) everywhere
    assert ours32.dtype == torch.float32
    assert torch.allclose(ours32, torch.full((2, 3), float(sqrt_one_minus_abar32)), atol=2e-9, rtol=0)  # 2 ulp
    # float32 cancellation in 1 - abar_1, far more than casting the exact value to float32 (~1e-9)
    assert abs(ours32[0, 0].item() - exact) > 5e-7
    assert LINEAR.q_sample(zeros.double(), 1, ones.double())[0, 0].item() == pytest.approx(exact, rel=1e-14)
    # half precision computes in float32 and casts at the end
    assert torch.equal(LINEAR.q_sample(zeros.bfloat16(), 1, ones.bfloat16()), ours32.bfloat16())


def test_alpha_bars_come_in_the_compute_dtype_and_attributes_stay_float64():
    s = NoiseSchedule(make_betas("cosine", 100))
    assert all(a.dtype == torch.float64 for a in s.alpha_bars(5))
    assert all(a.dtype == torch.float64 for a in s.alpha_bars(5, torch.zeros(2, dtype=torch.float64)))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        alpha_bar, alpha_bar_prev = s.alpha_bars(5, torch.zeros(2, dtype=dtype), prev_t=-1, final_alpha_bar=0.5)
        assert alpha_bar.dtype == alpha_bar_prev.dtype == torch.float32 and alpha_bar_prev.item() == 0.5
        assert alpha_bar.item() == pytest.approx(s.alpha_bar[5].item(), rel=1e-6)
    assert all(v.dtype == torch.float64 for v in (s.betas, s.alphas, s.alpha_bar, s.alpha_bar_prev, s.snr))


def test_q_sample_draws_noise_from_the_generator():
    x0 = torch.zeros(2, 5)
    a = LINEAR.q_sample(x0, 999, generator=torch.Generator().manual_seed(3))
    b = LINEAR.q_sample(x0, 999, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    expected = math.sqrt(1 - LINEAR.alpha_bar[999].item()) * noise
    assert torch.equal(a, b) and torch.allclose(a, expected)


def test_closed_form_equals_the_iterated_chain_in_distribution():
    # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z, iterated from x0, vs one-shot q_sample
    s = NoiseSchedule(make_betas("linear", 40, 1e-3, 0.05))
    n, t = 20_000, 25
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).expand(n, 2)
    x = x0
    for step in range(t + 1):
        beta = s.betas[step].item()
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(n, 2, dtype=torch.float64, generator=gen)
    one_shot = s.q_sample(x0, t, generator=gen)
    a = abar_by_hand(s.betas, t)
    mean, var = math.sqrt(a) * x0[0], 1 - a
    for draws in (x, one_shot):
        se_mean, se_var = math.sqrt(var / n), var * math.sqrt(2 / (n - 1))
        assert torch.allclose(draws.mean(0), mean, atol=4 * se_mean)
        assert torch.allclose(draws.var(0), torch.full((2,), var, dtype=torch.float64), atol=4 * se_var)


def test_velocity_is_the_rotation_of_noise_and_data():
    x0, noise = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0, 400, 999])
    v = LINEAR.velocity(x0, t, noise)
    for i, ti in enumerate(t.tolist()):
        a = abar_by_hand(LINEAR.betas, ti)
        assert torch.allclose(v[i], math.sqrt(a) * noise[i] - math.sqrt(1 - a) * x0[i], atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(t=st.integers(0, 999), prediction=st.sampled_from(schedules.PREDICTIONS), seed=st.integers(0, 2**16))
def test_split_prediction_round_trips(t, prediction, seed):
    gen = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    x_t = LINEAR.q_sample(x0, t, noise)
    output = {"eps": noise, "x0": x0, "v": LINEAR.velocity(x0, t, noise)}[prediction]
    x0_hat, eps_hat = LINEAR.split_prediction(output, x_t, t, prediction)
    assert torch.allclose(x0_hat, x0, atol=1e-4) and torch.allclose(eps_hat, noise, atol=1e-4)


# ---------------------------------------------------------------- posterior


@pytest.mark.parametrize("t", [1, 10, 500, 999])
def test_posterior_is_ho_equation_7(t):
    x0, x_t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    beta, a_t, a_prev = LINEAR.betas[t].item(), abar_by_hand(LINEAR.betas, t), abar_by_hand(LINEAR.betas, t - 1)
    mean, var, log_var = LINEAR.q_posterior(x0, x_t, t)
    expected_mean = math.sqrt(a_prev) * beta / (1 - a_t) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t) * x_t
    expected_var = (1 - a_prev) / (1 - a_t) * beta
    assert torch.allclose(mean, expected_mean, atol=1e-12, rtol=0)
    assert torch.allclose(var, torch.full_like(x0, expected_var), atol=1e-12, rtol=0)
    assert torch.allclose(log_var, torch.full_like(x0, math.log(expected_var)), atol=1e-12, rtol=0)


def test_posterior_at_t0_is_x0_with_the_ddpm_clipped_log_variance():
    x0, x_t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mean, var, log_var = LINEAR.q_posterior(x0, x_t, 0)
    b = LINEAR.betas
    var_1 = (1 - abar_by_hand(b, 0)) / (1 - abar_by_hand(b, 1)) * b[1].item()
    assert torch.allclose(mean, x0, atol=1e-12) and (var == 0).all()
    assert torch.allclose(log_var, torch.full_like(x0, math.log(var_1)), atol=1e-12)


@pytest.mark.parametrize("t,prev_t", [(999, 899), (500, 0), (20, 0), (7, 6), (20, -1)])
def test_strided_posterior_is_bayes_rule_on_the_skipped_chain(t, prev_t):
    # q(x_t | x_prev) = N(sqrt(abar_t/abar_prev) x_prev, 1 - abar_t/abar_prev),
    # q(x_prev | x0) = N(sqrt(abar_prev) x0, 1 - abar_prev)
    # the product of two Gaussians in x_prev: precision and precision-weighted mean add
    x0, x_t = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    a_t = abar_by_hand(LINEAR.betas, t)
    a_prev = abar_by_hand(LINEAR.betas, prev_t) if prev_t >= 0 else 1.0
    mean, var, _ = LINEAR.q_posterior(x0, x_t, t, prev_t=prev_t)
    if prev_t < 0:
        assert torch.allclose(mean, x0, atol=1e-12) and (var == 0).all()
        return
    ratio = a_t / a_prev
    precision = ratio / (1 - ratio) + 1 / (1 - a_prev)
    expected_mean = (math.sqrt(ratio) / (1 - ratio) * x_t + math.sqrt(a_prev) / (1 - a_prev) * x0) / precision
    assert torch.allclose(mean, expected_mean, atol=1e-10)
    assert torch.allclose(var, torch.full_like(x0, 1 / precision), atol=1e-12)


def test_posterior_with_batched_timesteps_matches_one_at_a_time():
    x0, x_t = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    t, prev = torch.tensor([0, 5, 900]), torch.tensor([-1, 2, 500])
    mean, var, log_var = LINEAR.q_posterior(x0, x_t, t, prev_t=prev)
    for i in range(3):
        m, v, lv = LINEAR.q_posterior(x0[i : i + 1], x_t[i : i + 1], t[i].item(), prev_t=prev[i].item())
        assert torch.allclose(mean[i : i + 1], m) and torch.allclose(var[i : i + 1], v)
        assert torch.allclose(log_var[i : i + 1], lv)


def test_per_sample_broadcasts_a_coefficient_over_every_other_dimension():
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float16)
    c = schedules.per_sample(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), x)
    assert c.shape == (3, 1, 1, 1) and c.dtype == torch.float16
    assert schedules.per_sample(torch.tensor(2.0, dtype=torch.float64), x).shape == ()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: make_betas("linear", 0), ValueError, "T must be a positive"),
        (lambda: make_betas("linear", 10.0), TypeError, "T must be an int"),
        (lambda: make_betas("quadratic", 10), ValueError, r"unknown schedule 'quadratic'.*cosine"),
        (lambda: make_betas(3, 10), TypeError, "name"),
        (lambda: make_betas("linear", 10, beta_start=0.0), ValueError, "beta_start"),
        (lambda: make_betas("linear", 10, beta_end=1.5), ValueError, "beta_end"),
        (lambda: NoiseSchedule(torch.full((2, 3), 0.1)), ValueError, "1-D"),
        (lambda: NoiseSchedule(torch.tensor([])), ValueError, "non-empty"),
        (lambda: NoiseSchedule(torch.tensor([0.1, 0.0])), ValueError, r"betas must lie in \(0, 1\)"),
        (lambda: NoiseSchedule(torch.tensor([0.1, 1.2])), ValueError, "betas must lie"),
        (lambda: NoiseSchedule(torch.tensor([0.1, 1.0, 0.2])), ValueError, "betas must lie"),
        (lambda: NoiseSchedule(torch.tensor([0.1, float("nan")])), ValueError, "betas must lie"),
        (lambda: NoiseSchedule(torch.tensor([1, 2])), TypeError, "floating-point"),
        (lambda: NoiseSchedule("linear"), TypeError, "betas"),
        (lambda: rescale_zero_terminal_snr(torch.tensor([0.1])), ValueError, "at least 2"),
        (lambda: rescale_zero_terminal_snr(torch.tensor([0.1, 1.0])), ValueError, "betas must lie"),
    ],
)
def test_bad_schedules_are_refused(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_final_beta_of_one_is_allowed():
    s = NoiseSchedule(torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64))
    assert s.alpha_bar[-1] == 0


@pytest.mark.parametrize(
    "t,error,match",
    [
        (-1, ValueError, r"t must lie in \[0, 999\]"),
        (1000, ValueError, r"t must lie in \[0, 999\].*1000"),
        (torch.tensor([5, 1000]), ValueError, "t must lie"),
        (1.0, TypeError, "Python int or a LongTensor"),
        (torch.tensor([1.0, 2.0]), TypeError, "integer timesteps"),
        (True, TypeError, "Python int"),
        (torch.tensor([1, 2, 3]), ValueError, "3 timesteps but x has batch shape"),
        (torch.tensor([[1, 2]]), ValueError, "shape"),
    ],
)
def test_bad_timesteps_are_refused(t, error, match):
    x = torch.zeros(2, 3)
    with pytest.raises(error, match=match):
        LINEAR.q_sample(x, t, x)


def test_bad_predictions_and_shapes_are_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"unknown prediction 'epsilon'.*'eps'"):
        LINEAR.split_prediction(x, x, 5, prediction="epsilon")
    with pytest.raises(ValueError, match="model_output has shape"):
        LINEAR.split_prediction(torch.zeros(2, 6), x, 5)
    with pytest.raises(ValueError, match="noise has shape"):
        LINEAR.q_sample(x, 5, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="prev_t must be smaller than t"):
        LINEAR.q_posterior(x, x, 5, prev_t=5)
    with pytest.raises(ValueError, match=r"prev_t must lie in \[any negative"):
        LINEAR.q_posterior(x, x, 5, prev_t=1000)
