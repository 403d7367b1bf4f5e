"""Parity with stock diffusers 0.42: the behaviours in PARITY.md that a reference library pins.

diffusers is a test dependency only. Every comparison is with a stock scheduler on float32
inputs, at PARITY.md's tolerances: like diffusers, minildm computes in the input's dtype, with
alpha_bar = cumprod(1 - beta) in float32. On the CPU, torch.randn(shape, generator=Generator().
manual_seed(k)) is exactly what a diffusers step draws, so noisy steps are compared by giving
diffusers the seeded generator and us the same noise. One float64 test runs diffusers' own
step code on a float64 alpha_bar to pin that float64 inputs take the same arithmetic, exactly.
Parity items checked against formulas rather than diffusers live beside their module: Ho eq. 7
and Bayes' rule for the posterior (test_schedules.py), DDIM's sigma at eta = 1
(test_samplers.py), normal_kl, the decoder and the VLB (test_diffusion.py).
"""

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.guiders import ClassifierFreeGuidance  # noqa: E402
from diffusers.guiders.guider_utils import rescale_noise_cfg  # noqa: E402  (the Stable Diffusion pipeline's, copied)

from minildm import samplers  # noqa: E402
from minildm.schedules import NoiseSchedule, make_betas, rescale_zero_terminal_snr  # noqa: E402

# diffusers' own numpy-2 deprecation noise from np.array(tensor, copy=False) in set_timesteps
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DIFFUSERS_NAME = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2",
                  "sigmoid": "sigmoid"}
PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SD = dict(beta_start=0.00085, beta_end=0.012)  # Stable Diffusion's scaled_linear range
SCHEDULES = {name: NoiseSchedule(make_betas(name, 1000)) for name in ("linear", "cosine")}


def seeded_noise(shape, seed, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def model_fn(x, t):
    """A fixed nonlinear stand-in for a network, different at every timestep."""
    t = torch.as_tensor(t, dtype=x.dtype)
    return 0.8 * torch.tanh(x) + 0.3 * torch.sin(t / 97.0 + x)


def max_gap(a, b):
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T,beta_range", [(1000, (1e-4, 0.02)), (1000, (0.00085, 0.012)), (50, (1e-3, 0.2))])
def test_betas_and_alpha_bar_match_ddpm_scheduler(name, T, beta_range):
    ref = DDPMScheduler(num_train_timesteps=T, beta_start=beta_range[0], beta_end=beta_range[1],
                        beta_schedule=DIFFUSERS_NAME[name])
    s = NoiseSchedule(make_betas(name, T, *beta_range))
    assert torch.allclose(s.betas.float(), ref.betas, atol=1e-6, rtol=0)
    assert torch.allclose(s.alpha_bar.float(), ref.alphas_cumprod, atol=1e-5, rtol=0)
    # beyond the tolerance: the float32 grid is diffusers' own, so float32 runs match bit for bit
    assert torch.equal(s.betas.float(), ref.betas)


@pytest.mark.parametrize("name,beta_range",
                         [("linear", (1e-4, 0.02)), ("scaled_linear", (0.00085, 0.012)), ("cosine", (1e-4, 0.02))])
def test_zero_terminal_snr_matches_ddim_rescale(name, beta_range):
    ref = DDIMScheduler(beta_start=beta_range[0], beta_end=beta_range[1], beta_schedule=DIFFUSERS_NAME[name],
                        rescale_betas_zero_snr=True)
    ours = rescale_zero_terminal_snr(make_betas(name, 1000, *beta_range))
    assert torch.allclose(ours.float(), ref.betas, atol=1e-5, rtol=0)
    s = NoiseSchedule(ours)
    assert s.alpha_bar[-1] == 0 and ours[-1] == 1
    assert s.alpha_bar[0].item() == pytest.approx(1 - make_betas(name, 1000, *beta_range)[0].item(), rel=1e-12)


# ---------------------------------------------------------------- timestep spacing


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("N", [1, 3, 7, 10, 50, 999, 1000])
def test_timestep_spacing_equals_set_timesteps(spacing, offset, N):
    ref = DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(N)
    if spacing == "leading" and offset == 1 and N == 1000:
        # diffusers returns timestep 1000, which no schedule of T = 1000 can index; we refuse it
        assert ref.timesteps.max().item() == 1000
        with pytest.raises(ValueError, match="past T-1=999"):
            samplers.timesteps(1000, N, spacing, offset)
        return
    ours = samplers.timesteps(1000, N, spacing, offset)
    assert ours.dtype == torch.int64 and torch.equal(ours, ref.timesteps)
    ddim = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ddim.set_timesteps(N)
    assert torch.equal(ours, ddim.timesteps)


def test_trailing_keeps_n_steps_where_numpy_arange_gives_one_more():
    ref = DDPMScheduler(timestep_spacing="trailing")
    ref.set_timesteps(61)
    assert len(ref.timesteps) == 62 and ref.timesteps[-1].item() == -1  # diffusers' float arange overshoots
    ours = samplers.timesteps(1000, 61, "trailing")
    assert torch.equal(ours, ref.timesteps[:61])


# ---------------------------------------------------------------- forward process


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("t", [0, 10, 500, 999])
def test_q_sample_and_velocity_match_add_noise_and_get_velocity(name, t):
    ref = DDPMScheduler(beta_schedule=DIFFUSERS_NAME[name])
    s = SCHEDULES[name]
    x0, noise = seeded_noise((2, 3, 4, 4), 0), seeded_noise((2, 3, 4, 4), 1)
    t_batch = torch.full((2,), t)
    assert max_gap(s.q_sample(x0, t_batch, noise), ref.add_noise(x0, noise, t_batch)) <= 1e-6
    assert max_gap(s.velocity(x0, t_batch, noise), ref.get_velocity(x0, noise, t_batch)) <= 1e-6


# ---------------------------------------------------------------- DDPM step


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_ddpm_step_matches_ddpm_scheduler(name, prediction, variance, t):
    ref = DDPMScheduler(beta_schedule=DIFFUSERS_NAME[name], prediction_type=PREDICTION_TYPE[prediction],
                        variance_type=variance, clip_sample=True)
    s = SCHEDULES[name]
    x_t, output = seeded_noise((2, 3, 4, 4), 2), 2.0 * seeded_noise((2, 3, 4, 4), 3)  # large: clipping bites
    expected = ref.step(output, t, x_t, generator=torch.Generator().manual_seed(7))
    x_prev, x0_hat = samplers.ddpm_step(s, output, t, x_t, noise=seeded_noise((2, 3, 4, 4), 7),
                                        prediction=prediction, variance=variance, clip=1.0)
    assert x_prev.dtype == x0_hat.dtype == torch.float32
    assert max_gap(x0_hat, expected.pred_original_sample) <= 1e-5
    assert max_gap(x_prev, expected.prev_sample) <= 1e-5
    # and the same noise stream when the step draws from the generator itself
    x_prev_gen, _ = samplers.ddpm_step(s, output, t, x_t, prediction=prediction, variance=variance, clip=1.0,
                                       generator=torch.Generator().manual_seed(7))
    assert max_gap(x_prev_gen, expected.prev_sample) <= 1e-5


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_learned_range_strided_low_t_step_interpolates_in_log_space(name):
    ref = DDPMScheduler(beta_schedule=DIFFUSERS_NAME[name], variance_type="learned_range", clip_sample=False)
    ref.set_timesteps(timesteps=[20, 0])
    s = SCHEDULES[name]
    x_t = seeded_noise((2, 3, 4, 4), 4)
    output = torch.cat([seeded_noise((2, 3, 4, 4), 5), torch.tanh(seeded_noise((2, 3, 4, 4), 6))], dim=1)  # (B, 2C)
    expected = ref.step(output, 20, x_t, generator=torch.Generator().manual_seed(8))
    x_prev, x0_hat = samplers.ddpm_step(s, output, 20, x_t, prev_t=0, noise=seeded_noise((2, 3, 4, 4), 8),
                                        variance="learned_range")
    assert max_gap(x0_hat, expected.pred_original_sample) <= 1e-5
    assert max_gap(x_prev, expected.prev_sample) <= 1e-5
    # at this pair beta' is ~50x beta~': a linear mix of the variances would land far away
    a20, a0 = s.alpha_bar[20].item(), s.alpha_bar[0].item()
    beta, beta_tilde = 1 - a20 / a0, (1 - a0) / (1 - a20) * (1 - a20 / a0)
    frac = (output[:, 3:].double() + 1) / 2
    linear_std = (frac * beta + (1 - frac) * beta_tilde).sqrt()
    log_std = torch.exp(0.5 * (frac * np.log(beta) + (1 - frac) * np.log(beta_tilde)))
    assert (linear_std - log_std).abs().max() > 1e-2


def in_float64(scheduler):
    """The same diffusers scheduler with alpha_bar = cumprod(1 - beta) taken in float64 from float64 betas."""
    scheduler.alphas_cumprod = torch.cumprod(1 - make_betas("linear", 1000), dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("t", [999, 500, 1, 0])
def test_float64_inputs_run_diffusers_arithmetic_in_float64(prediction, t):
    # diffusers' step on a float64 alpha_bar and float64 tensors: the exact maths, which float64
    # inputs get from minildm; float32 inputs would miss it by ~5e-5 at t = 1 (cancellation)
    ref = in_float64(DDPMScheduler(prediction_type=PREDICTION_TYPE[prediction], clip_sample=False))
    s = SCHEDULES["linear"]
    x_t, output = seeded_noise((2, 3, 4, 4), 2, torch.float64), seeded_noise((2, 3, 4, 4), 3, torch.float64)
    expected = ref.step(output, t, x_t, generator=torch.Generator().manual_seed(7))
    x_prev, x0_hat = samplers.ddpm_step(s, output, t, x_t, noise=seeded_noise((2, 3, 4, 4), 7, torch.float64),
                                        prediction=prediction)
    assert x_prev.dtype == torch.float64
    assert max_gap(x0_hat, expected.pred_original_sample) < 1e-12
    assert max_gap(x_prev, expected.prev_sample) < 1e-12
    t_batch = torch.full((2,), t)
    assert max_gap(s.velocity(x_t, t_batch, output), ref.get_velocity(x_t, output, t_batch)) < 1e-12


# ---------------------------------------------------------------- DDIM


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_eta0_chain_matches_in_the_stable_diffusion_configuration(prediction, set_alpha_to_one):
    ref = DDIMScheduler(beta_schedule="scaled_linear", **SD, steps_offset=1, clip_sample=False,
                        set_alpha_to_one=set_alpha_to_one, prediction_type=PREDICTION_TYPE[prediction])
    ref.set_timesteps(10)
    s = NoiseSchedule(make_betas("scaled_linear", 1000, **SD))
    ts = samplers.timesteps(1000, 10, "leading", offset=1)
    assert torch.equal(ts, ref.timesteps)
    final_alpha_bar = 1.0 if set_alpha_to_one else s.alpha_bar[0].item()
    ours = theirs = seeded_noise((2, 4, 8, 8), 9)
    for i, t in enumerate(ts.tolist()):
        prev_t = ts[i + 1].item() if i + 1 < len(ts) else -1
        expected = ref.step(model_fn(theirs, t), t, theirs)
        ours, x0_hat = samplers.ddim_step(s, model_fn(ours, t), t, prev_t, ours, prediction=prediction,
                                          final_alpha_bar=final_alpha_bar)
        assert max_gap(x0_hat, expected.pred_original_sample) <= 1e-5, t
        assert max_gap(ours, expected.prev_sample) <= 1e-5, t
        theirs = expected.prev_sample


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("t", [999, 500, 20, 19])
def test_ddim_eta1_step_with_noise_and_clipping_matches(name, prediction, t):
    ref = DDIMScheduler(beta_schedule=DIFFUSERS_NAME[name], clip_sample=True,
                        prediction_type=PREDICTION_TYPE[prediction])
    ref.set_timesteps(50)  # steps of 20; t = 19 is a final step (prev_t = -1, alpha_bar_prev = 1)
    s = SCHEDULES[name]
    x_t, z = seeded_noise((2, 3, 4, 4), 10), seeded_noise((2, 3, 4, 4), 12)
    output = 2.0 * seeded_noise((2, 3, 4, 4), 11)  # large: clipping bites
    expected = ref.step(output, t, x_t, eta=1.0, variance_noise=z)
    x_prev, x0_hat = samplers.ddim_step(s, output, t, t - 20, x_t, eta=1.0, noise=z, prediction=prediction, clip=1.0)
    assert max_gap(x0_hat, expected.pred_original_sample) <= 1e-5
    assert max_gap(x_prev, expected.prev_sample) <= 1e-5


def ddim_chain(s, ts, x_T, prediction):
    """Our DDIM eta = 0 chain over the given timesteps, landing on alpha_bar = 1."""
    x, seen = x_T, []
    for i, t in enumerate(ts.tolist()):
        seen.append(x)
        prev_t = ts[i + 1].item() if i + 1 < len(ts) else -1
        x, _ = samplers.ddim_step(s, model_fn(x, t), t, prev_t, x, prediction=prediction)
    return x, seen


def ode_close(ours, theirs):
    """Equal at PARITY's 1e-4, read as torch.allclose reads it (atol 1e-4 plus 1e-5 relative).

    With eps-prediction this stand-in model drives the chains to |x| ~ 400 (its x0_hat at
    t = 999 is about x / 0.006), where float32 values are 3e-5 apart; there stock DDIMScheduler
    and stock DPM-Solver++ differ from each other by 1.5e-4 too. x0 and v chains stay in [-2, 2].
    """
    return torch.allclose(ours, theirs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_dpm_solver_pp_first_order_is_ddim(prediction):
    ref = DPMSolverMultistepScheduler(solver_order=1, algorithm_type="dpmsolver++", timestep_spacing="trailing",
                                      prediction_type=PREDICTION_TYPE[prediction], final_sigmas_type="zero")
    ref.set_timesteps(10)
    s = SCHEDULES["linear"]
    ts = samplers.timesteps(1000, 10, "trailing")
    assert torch.equal(ts, ref.timesteps)
    x_T = seeded_noise((2, 3, 8, 8), 13)
    ours, _ = ddim_chain(s, ts, x_T, prediction)
    x = x_T
    for t in ref.timesteps:
        x = ref.step(model_fn(x, t.item()), t, x).prev_sample
    assert ode_close(ours, x)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_euler_on_the_probability_flow_ode_is_ddim(prediction):
    # Euler works on x / sqrt(abar) (noise level sigma = sqrt((1 - abar) / abar)); its
    # scale_model_input gives back our x_t
    ref = EulerDiscreteScheduler(timestep_spacing="trailing", prediction_type=PREDICTION_TYPE[prediction])
    ref.set_timesteps(10)
    s = SCHEDULES["linear"]
    ts = samplers.timesteps(1000, 10, "trailing")
    assert torch.equal(ts, ref.timesteps.long())
    x_T = seeded_noise((2, 3, 8, 8), 14)
    ours, seen = ddim_chain(s, ts, x_T, prediction)
    x = x_T * (ref.sigmas[0] ** 2 + 1) ** 0.5
    for i, t in enumerate(ref.timesteps):
        x_t = ref.scale_model_input(x, t)
        assert ode_close(x_t, seen[i])
        x = ref.step(model_fn(x_t, int(t)), t, x).prev_sample
    assert ode_close(ours, x)


# ---------------------------------------------------------------- guidance


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, 7.5])
def test_cfg_matches_diffusers_guider(scale):
    u, c = seeded_noise((2, 4, 8, 8), 15), seeded_noise((2, 4, 8, 8), 16)
    guided = ClassifierFreeGuidance(guidance_scale=scale).forward(c, u).pred
    assert max_gap(samplers.cfg(u, c, scale), guided) <= 1e-6
    # Ho & Salimans' w is diffusers' "original formulation": cond + w (cond - uncond) = cfg with scale 1 + w
    original = ClassifierFreeGuidance(guidance_scale=scale, use_original_formulation=True).forward(c, u).pred
    assert max_gap(samplers.cfg(u, c, 1 + scale), original) <= 1e-5


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_rescale_cfg_matches_rescale_noise_cfg(phi):
    u, c = seeded_noise((2, 4, 8, 8), 17), seeded_noise((2, 4, 8, 8), 18)
    guided = samplers.cfg(u, c, 7.5)
    expected = rescale_noise_cfg(guided, c, guidance_rescale=phi)
    assert max_gap(samplers.rescale_cfg(guided, c, phi), expected) <= 1e-6
    # the default phi is 0.7
    expected = rescale_noise_cfg(guided, c, guidance_rescale=0.7)
    assert max_gap(samplers.rescale_cfg(guided, c), expected) <= 1e-6
