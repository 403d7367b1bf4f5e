"""minildm.samplers: timestep spacing, DDPM and DDIM steps, guidance, the sampling loop."""

import math

import pytest
import torch

from minildm import samplers
from minildm.schedules import NoiseSchedule, make_betas, rescale_zero_terminal_snr

LINEAR = NoiseSchedule(make_betas("linear", 1000))
SHORT = NoiseSchedule(make_betas("linear", 20, 1e-3, 0.2))
POINT = torch.tensor([0.25, -0.5])  # the whole "dataset" of the oracle below


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same random inputs on every run."""
    torch.manual_seed(0)


def oracle(prediction, s=SHORT):
    """The exact denoiser for data that is the single point POINT."""
    def model(x_t, t, **_):
        a = s.alpha_bar[t].to(x_t.dtype)[:, None]
        eps = (x_t - a.sqrt() * POINT.to(x_t.dtype)) / (1 - a).sqrt()
        x0 = POINT.to(x_t.dtype).expand_as(x_t)
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]
    return model


# ---------------------------------------------------------------- timesteps


@pytest.mark.parametrize("spacing", samplers.SPACINGS)
@pytest.mark.parametrize("T,steps", [(1000, 1), (1000, 7), (1000, 50), (1000, 1000), (20, 20), (20, 6)])
def test_timesteps_are_distinct_descending_and_in_range(spacing, T, steps):
    ts = samplers.timesteps(T, steps, spacing)
    assert ts.dtype == torch.int64 and ts.shape == (steps,)
    assert (ts[1:] < ts[:-1]).all() and ts.min() >= 0 and ts.max() <= T - 1


def test_each_spacing_starts_and_ends_where_its_formula_says():
    assert samplers.timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert samplers.timesteps(1000, 10, "leading", offset=1).tolist() == list(range(901, 0, -100))
    assert samplers.timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert samplers.timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    assert samplers.timesteps(1000, 1000, "trailing").tolist() == list(range(999, -1, -1))


def test_bad_timestep_requests_are_refused():
    with pytest.raises(ValueError, match=r"steps must lie in \[1, T=10\]"):
        samplers.timesteps(10, 11)
    with pytest.raises(ValueError, match="steps must lie"):
        samplers.timesteps(10, 0)
    with pytest.raises(TypeError, match="steps must be an int"):
        samplers.timesteps(10, 5.0)
    with pytest.raises(ValueError, match=r"unknown spacing 'uniform'.*trailing"):
        samplers.timesteps(10, 5, "uniform")
    with pytest.raises(ValueError, match="offset=1 pushes the first timestep to 10"):
        samplers.timesteps(10, 10, "leading", offset=1)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        samplers.timesteps(10, 5, offset=-1)


# ---------------------------------------------------------------- DDPM step


def test_ddpm_adds_no_noise_on_the_last_step():
    x_t, eps = torch.randn(3, 2), torch.randn(3, 2)
    a = samplers.ddpm_step(SHORT, eps, 0, x_t, noise=torch.randn(3, 2))[0]
    b = samplers.ddpm_step(SHORT, eps, 0, x_t, noise=torch.randn(3, 2))[0]
    x0_hat = SHORT.split_prediction(eps, x_t, 0)[0]
    assert torch.equal(a, b) and torch.allclose(a, x0_hat)
    c = samplers.ddpm_step(SHORT, eps, 7, x_t, prev_t=-1, noise=torch.randn(3, 2))[0]
    assert torch.allclose(c, SHORT.split_prediction(eps, x_t, 7)[0])


def test_ddpm_noise_has_the_posterior_standard_deviation_per_sample():
    x_t, eps, z = (torch.randn(2, 3, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 9])
    with_noise, _ = samplers.ddpm_step(SHORT, eps, t, x_t, noise=z)
    without, _ = samplers.ddpm_step(SHORT, eps, t, x_t, noise=torch.zeros_like(z))
    beta_tilde_9 = (1 - SHORT.alpha_bar[8]) / (1 - SHORT.alpha_bar[9]) * SHORT.betas[9]
    assert torch.equal(with_noise[0], without[0])  # the t = 0 sample gets no noise
    assert torch.allclose(with_noise[1] - without[1], beta_tilde_9.sqrt() * z[1], atol=1e-12)
    large, _ = samplers.ddpm_step(SHORT, eps, 9, x_t, noise=z, variance="fixed_large")
    large0, _ = samplers.ddpm_step(SHORT, eps, 9, x_t, noise=torch.zeros_like(z), variance="fixed_large")
    assert torch.allclose(large - large0, SHORT.betas[9].sqrt() * z, atol=1e-12)


def test_ddpm_step_with_explicit_previous_step_is_the_one_step_update():
    x_t, eps, z = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3)
    for variance in ("fixed_small", "fixed_large"):
        a = samplers.ddpm_step(SHORT, eps, 11, x_t, noise=z, variance=variance)
        b = samplers.ddpm_step(SHORT, eps, 11, x_t, prev_t=10, noise=z, variance=variance)
        assert torch.allclose(a[0], b[0], atol=1e-6) and torch.equal(a[1], b[1])


def test_ddpm_clip_clamps_x0_hat_before_the_mean():
    x_t, x0_out = torch.zeros(1, 2), torch.tensor([[3.0, -0.5]])
    x_prev, x0_hat = samplers.ddpm_step(SHORT, x0_out, 5, x_t, prediction="x0", clip=1.0, noise=torch.zeros(1, 2))
    assert torch.equal(x0_hat, torch.tensor([[1.0, -0.5]]))
    mean, _, _ = SHORT.q_posterior(x0_hat, x_t, 5)
    assert torch.allclose(x_prev, mean)


# ---------------------------------------------------------------- DDIM step


@pytest.mark.parametrize("t,prev_t", [(19, 18), (19, 14), (10, 0), (3, -1)])
def test_ddim_sigma_at_eta_one_is_the_posterior_variance(t, prev_t):
    x_t, eps, z = (torch.randn(4, 3, dtype=torch.float64) for _ in range(3))
    noisy, _ = samplers.ddim_step(SHORT, eps, t, prev_t, x_t, eta=1.0, noise=z)
    quiet, _ = samplers.ddim_step(SHORT, eps, t, prev_t, x_t, eta=1.0, noise=torch.zeros_like(z))
    sigma = ((noisy - quiet) * z).sum().item() / (z * z).sum().item()  # least squares: noisy - quiet = sigma z
    # beta~ = (1 - abar_prev) / (1 - abar_t) (1 - abar_t / abar_prev), with alpha_bar as a Python product
    a_t = math.prod(1 - b for b in SHORT.betas[: t + 1].tolist())
    a_prev = math.prod(1 - b for b in SHORT.betas[: prev_t + 1].tolist())  # the empty product 1 when prev_t = -1
    assert sigma**2 == pytest.approx((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev), abs=1e-12)
    _, var, _ = SHORT.q_posterior(torch.zeros_like(x_t), x_t, t, prev_t=prev_t)
    assert sigma**2 == pytest.approx(var[0, 0].item(), abs=1e-12)


@pytest.mark.parametrize("t,prev_t", [(19, 18), (19, 14), (10, 0)])
def test_ddim_at_eta_one_is_the_ddpm_step(t, prev_t):
    # sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z == posterior mean + sigma z
    x_t, eps, z = (torch.randn(4, 3, dtype=torch.float64) for _ in range(3))
    ddim, _ = samplers.ddim_step(SHORT, eps, t, prev_t, x_t, eta=1.0, noise=z)
    ddpm, _ = samplers.ddpm_step(SHORT, eps, t, x_t, prev_t=prev_t, noise=z)
    assert torch.allclose(ddim, ddpm, atol=1e-10)


def test_ddim_final_step_uses_final_alpha_bar():
    x_t, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    x0_hat, _ = SHORT.split_prediction(eps, x_t, 5)
    landed, _ = samplers.ddim_step(SHORT, eps, 5, -1, x_t)
    assert torch.allclose(landed, x0_hat)
    a0 = SHORT.alpha_bar[0].item()
    sd, _ = samplers.ddim_step(SHORT, eps, 5, -1, x_t, final_alpha_bar=a0)
    assert torch.allclose(sd, math.sqrt(a0) * x0_hat + math.sqrt(1 - a0) * eps)


def test_ddim_and_ddpm_refuse_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        samplers.ddim_step(SHORT, x, 5, 4, x, eta=-0.1)
    with pytest.raises(ValueError, match="final_alpha_bar"):
        samplers.ddim_step(SHORT, x, 5, -1, x, final_alpha_bar=0.0)
    with pytest.raises(ValueError, match="prev_t must be smaller than t"):
        samplers.ddim_step(SHORT, x, 5, 6, x)
    with pytest.raises(ValueError, match="noise must be a tensor shaped like x_t"):
        samplers.ddpm_step(SHORT, x, 5, x, noise=torch.zeros(3))
    with pytest.raises(ValueError, match="clip must be a positive"):
        samplers.ddim_step(SHORT, x, 5, 4, x, clip=-1.0)
    with pytest.raises(ValueError, match="unknown variance"):
        samplers.ddpm_step(SHORT, x, 5, x, variance="small")


# ---------------------------------------------------------------- guidance


def test_cfg_scale_one_is_conditional_and_w_is_scale_minus_one():
    u, c = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.allclose(samplers.cfg(u, c, 1.0), c, atol=1e-6)
    assert torch.equal(samplers.cfg(u, c, 0.0), u)
    w = 2.5  # Ho & Salimans: (1 + w) eps_c - w eps_u
    assert torch.allclose(samplers.cfg(u, c, 1 + w), (1 + w) * c - w * u, atol=1e-6)


def test_rescale_cfg_matches_the_conditional_spread():
    gen = torch.Generator().manual_seed(0)
    cond, guided = torch.randn(3, 2, 4, 4, generator=gen), 5 * torch.randn(3, 2, 4, 4, generator=gen)
    assert torch.equal(samplers.rescale_cfg(guided, cond, phi=0.0), guided)
    full = samplers.rescale_cfg(guided, cond, phi=1.0)
    assert torch.allclose(full.flatten(1).std(1), cond.flatten(1).std(1), atol=1e-5)
    mixed = samplers.rescale_cfg(guided, cond)
    assert torch.allclose(mixed, 0.7 * full + 0.3 * guided, atol=1e-5)


# ---------------------------------------------------------------- the sampling loop


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler,steps,spacing",
                         [("ddpm", None, "leading"), ("ddpm", 5, "trailing"), ("ddim", 4, "leading")])
def test_sampling_an_exact_denoiser_returns_its_data_point(prediction, sampler, steps, spacing):
    out = samplers.sample(oracle(prediction), SHORT, (6, 2), sampler=sampler, steps=steps, spacing=spacing,
                          prediction=prediction, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, POINT.expand(6, 2), atol=1e-5)


def test_sampling_is_reproducible_from_a_seed_and_x_T_fixes_ddim():
    model = oracle("eps")
    a = samplers.sample(lambda x, t: 0.5 * x, SHORT, (4, 2), generator=torch.Generator().manual_seed(1))
    b = samplers.sample(lambda x, t: 0.5 * x, SHORT, (4, 2), generator=torch.Generator().manual_seed(1))
    c = samplers.sample(lambda x, t: 0.5 * x, SHORT, (4, 2), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    x_T = torch.randn(4, 2)
    d1, d2 = (samplers.sample(model, SHORT, (4, 2), sampler="ddim", steps=5, x_T=x_T,
                              generator=torch.Generator().manual_seed(seed)) for seed in (1, 2))
    assert torch.equal(d1, d2)


def test_callback_and_trajectory_see_every_step():
    calls = []
    traj = samplers.Trajectory()
    every2 = samplers.Trajectory(every=2)

    def callback(i, t, x_t, x0_hat):
        calls.append((i, t))
        traj(i, t, x_t, x0_hat)
        every2(i, t, x_t, x0_hat)

    x_T = torch.randn(3, 2)
    samplers.sample(oracle("eps"), SHORT, (3, 2), sampler="ddim", steps=5, callback=callback, x_T=x_T)
    assert calls == list(enumerate([16, 12, 8, 4, 0]))
    xs, x0s = traj.stacked()
    assert xs.shape == (5, 3, 2) and torch.equal(xs[0], x_T) and torch.allclose(x0s, POINT.expand(5, 3, 2), atol=1e-5)
    assert every2.ts == [16, 8, 0] and len(every2) == 3


def test_guided_sampling_calls_the_model_with_both_kwargs():
    seen = []

    def model(x_t, t, label):
        seen.append(label)
        return torch.full_like(x_t, float(label))

    x_T = torch.zeros(2, 2)
    guided = samplers.sample(model, SHORT, (2, 2), sampler="ddim", steps=2, x_T=x_T, prediction="x0",
                             model_kwargs={"label": 1}, guidance_scale=3.0, uncond_kwargs={"label": 0})
    assert seen == [1, 0, 1, 0]
    assert torch.allclose(guided, torch.full((2, 2), 3.0))  # x0 = 0 + 3 (1 - 0)
    plain = samplers.sample(model, SHORT, (2, 2), sampler="ddim", steps=2, x_T=x_T, prediction="x0",
                            model_kwargs={"label": 1})
    assert torch.allclose(plain, torch.ones(2, 2))


def test_learned_range_models_sample_with_both_samplers():
    def model(x_t, t):
        return torch.cat([oracle("eps")(x_t, t), torch.zeros_like(x_t)], dim=1)  # (B, 2C)

    for sampler in ("ddpm", "ddim"):
        out = samplers.sample(model, SHORT, (3, 2), sampler=sampler, steps=6, variance="learned_range",
                              generator=torch.Generator().manual_seed(0), guidance_scale=2.0, uncond_kwargs={})
        assert torch.allclose(out, POINT.expand(3, 2), atol=1e-5)


def test_sampling_eps_on_a_zero_terminal_snr_schedule_is_refused_but_v_works():
    s = NoiseSchedule(rescale_zero_terminal_snr(make_betas("linear", 20, 1e-3, 0.2)))
    with pytest.raises(ValueError, match="zero terminal SNR"):
        samplers.sample(oracle("eps", s), s, (2, 2), sampler="ddim", steps=4, spacing="trailing")
    out = samplers.sample(oracle("v", s), s, (2, 2), sampler="ddim", steps=4, spacing="trailing", prediction="v")
    assert torch.allclose(out, POINT.expand(2, 2), atol=1e-5)


def test_sample_refuses_bad_arguments():
    model = oracle("eps")
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'"):
        samplers.sample(model, SHORT, (2, 2), sampler="euler")
    with pytest.raises(ValueError, match="guidance_scale needs uncond_kwargs"):
        samplers.sample(model, SHORT, (2, 2), guidance_scale=2.0)
    with pytest.raises(ValueError, match=r"x_T has shape \(3, 2\) but shape is \(2, 2\)"):
        samplers.sample(model, SHORT, (2, 2), x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="every must be a positive int"):
        samplers.Trajectory(every=0)
