"""minildm.diffusion: L_simple, the VLB terms and bits/dim, learned variance, L_hybrid."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from minildm import diffusion
from minildm.schedules import NoiseSchedule, make_betas

# a short, coarse schedule: every term of the VLB is visible and the loops are cheap
SHORT = NoiseSchedule(make_betas("linear", 12, 1e-3, 0.3))
LEVELS = torch.linspace(-1, 1, 256, dtype=torch.float64)  # the 256 data values, 2/255 apart


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same random inputs on every run."""
    torch.manual_seed(0)


def abar_by_hand(s, t):
    return math.prod(1 - b for b in s.betas[: t + 1].tolist())


def quantised(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return LEVELS[torch.randint(0, 256, shape, generator=gen)]


# ---------------------------------------------------------------- Gaussian pieces


def test_normal_kl_equals_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(5, 3, dtype=torch.float64, generator=gen) for _ in range(4))
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    assert torch.allclose(diffusion.normal_kl(m1, lv1, m2, lv2), expected, atol=1e-12)
    # plain numbers broadcast: KL to a standard normal
    expected = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(0.0, 1.0))
    assert torch.allclose(diffusion.normal_kl(m1, lv1, 0.0, 0.0), expected, atol=1e-12)


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.37, -6.0), (-0.999, -1.0), (1.4, 0.5), (0.0, -9.0)])
def test_decoder_probabilities_over_the_256_bins_sum_to_one(mean, log_scale):
    for dtype in (torch.float32, torch.float64):
        x = LEVELS.to(dtype)
        logp = diffusion.discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, log_scale))
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=2e-3)


def test_decoder_bins_are_the_normal_cdf_between_bin_edges_with_open_tails():
    mean, std = torch.tensor(0.2, dtype=torch.float64), 0.05
    edges = torch.cat([torch.tensor([-math.inf]), (LEVELS[:-1] + LEVELS[1:]) / 2, torch.tensor([math.inf])])
    cdf = Normal(mean, std).cdf(edges)
    expected = cdf[1:] - cdf[:-1]  # (256,)
    logp = diffusion.discretized_gaussian_log_likelihood(
        LEVELS, mean.expand(256), torch.full((256,), math.log(std), dtype=torch.float64)
    )
    assert torch.allclose(logp.exp(), expected, atol=1e-9)


# ---------------------------------------------------------------- L_simple


def test_l_simple_is_zero_for_an_oracle_on_a_single_point():
    # data = one point c: the exact eps / x0 / v are functions of x_t alone
    c = torch.tensor([[0.3, -0.7]]).expand(64, 2)
    for prediction in ("eps", "x0", "v"):
        def oracle(x_t, t):
            a = torch.tensor([abar_by_hand(SHORT, ti) for ti in t.tolist()], dtype=torch.float32)[:, None]
            eps = (x_t - a.sqrt() * c) / (1 - a).sqrt()
            return {"eps": eps, "x0": c, "v": a.sqrt() * eps - (1 - a).sqrt() * c}[prediction]

        gen = torch.Generator().manual_seed(1)
        loss = diffusion.loss_simple(oracle, c, SHORT, prediction=prediction, generator=gen)
        assert loss.item() < 1e-10


@pytest.mark.parametrize("prediction,mmse", [("eps", lambda a: a), ("x0", lambda a: 1 - a), ("v", lambda a: 1.0)])
def test_l_simple_of_the_bayes_optimal_model_on_gaussian_data(prediction, mmse):
    # x0 ~ N(0, 1) => x_t ~ N(0, 1); E[eps | x_t] = sqrt(1 - abar) x_t, E[x0 | x_t] = sqrt(abar) x_t,
    # E[v | x_t] = 0. The minimum mean squared errors are abar, 1 - abar and 1.
    t = 5
    a = abar_by_hand(SHORT, t)

    def bayes(x_t, _t):
        return {"eps": math.sqrt(1 - a) * x_t, "x0": math.sqrt(a) * x_t, "v": 0 * x_t}[prediction]

    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(20_000, 4, dtype=torch.float64, generator=gen)
    loss = diffusion.loss_simple(bayes, x0, SHORT, prediction=prediction, generator=gen, t=torch.full((20_000,), t))
    # squared errors of a Gaussian with variance m: mean m, standard error m sqrt(2 / n)
    m = mmse(a)
    assert loss.item() == pytest.approx(m, abs=4 * m * math.sqrt(2 / 80_000))


def test_l_simple_uses_the_given_t_and_noise():
    x0, noise = torch.randn(3, 2), torch.randn(3, 2)
    t = torch.tensor([0, 4, 11])
    seen = {}

    def model(x_t, t_in):
        seen["x_t"], seen["t"] = x_t, t_in
        return torch.zeros_like(x_t)

    loss = diffusion.loss_simple(model, x0, SHORT, t=t, noise=noise)
    assert torch.equal(seen["t"], t) and torch.allclose(seen["x_t"], SHORT.q_sample(x0, t, noise))
    assert loss.item() == pytest.approx((noise**2).mean().item())


# ---------------------------------------------------------------- learned variance


def test_learned_range_interpolates_log_variances_not_variances():
    t = 3
    x_t = torch.randn(3, 2, dtype=torch.float64)
    v = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)[:, None].expand(3, 2)
    output = torch.cat([torch.randn(3, 2, dtype=torch.float64), v], dim=1)  # (B, 2C)
    _, log_var, _ = diffusion.p_mean_variance(SHORT, output, t, x_t, variance="learned_range")
    beta = SHORT.betas[t].item()
    beta_tilde = (1 - abar_by_hand(SHORT, t - 1)) / (1 - abar_by_hand(SHORT, t)) * beta
    expected = torch.tensor([math.log(beta_tilde), 0.5 * (math.log(beta) + math.log(beta_tilde)), math.log(beta)])
    assert torch.allclose(log_var[:, 0], expected.double(), atol=1e-12)
    # v = 0 is the geometric mean of the two variances, clearly not their arithmetic mean
    assert not math.isclose(log_var[1, 0].exp().item(), (beta + beta_tilde) / 2, rel_tol=0.02)


def test_fixed_variances_are_beta_tilde_and_beta():
    x_t, eps = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    _, small, _ = diffusion.p_mean_variance(SHORT, eps, 4, x_t, variance="fixed_small")
    _, large, _ = diffusion.p_mean_variance(SHORT, eps, 4, x_t, variance="fixed_large")
    beta = SHORT.betas[4].item()
    assert torch.allclose(large, torch.full_like(x_t, math.log(beta)))
    beta_tilde = (1 - abar_by_hand(SHORT, 3)) / (1 - abar_by_hand(SHORT, 4)) * beta
    assert torch.allclose(small, torch.full_like(x_t, math.log(beta_tilde)))
    # at t = 0 both use the clipped posterior variance, as improved-diffusion does
    _, small0, _ = diffusion.p_mean_variance(SHORT, eps, 0, x_t, variance="fixed_small")
    _, large0, _ = diffusion.p_mean_variance(SHORT, eps, 0, x_t, variance="fixed_large")
    assert torch.isfinite(small0).all() and torch.equal(small0, large0)


# ---------------------------------------------------------------- the VLB


def toy_model(variance):
    """A fixed, t-dependent function standing in for a network."""
    def model(x_t, t):
        eps = 0.4 * torch.tanh(x_t) + 0.02 * t[:, None].to(x_t.dtype)
        if variance != "learned_range":
            return eps
        return torch.cat([eps, torch.sin(x_t + t[:, None].to(x_t.dtype))], dim=1)
    return model


def vlb_by_hand(model, x0, s, variance, seed):
    """An independent VLB: torch.distributions for every KL, Normal CDFs for the decoder."""
    gen = torch.Generator().manual_seed(seed)
    B, D, T = x0.shape[0], x0[0].numel(), s.T
    total = torch.zeros(B, dtype=torch.float64)
    for t in range(T):
        noise = torch.randn(x0.shape, dtype=x0.dtype, generator=gen)
        a_t = abar_by_hand(s, t)
        a_prev = abar_by_hand(s, t - 1) if t > 0 else 1.0
        beta = s.betas[t].item()
        x_t = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * noise
        out = model(x_t, torch.full((B,), t))
        eps = out[:, : x0.shape[1]]
        x0_hat = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        c0, ct = math.sqrt(a_prev) * beta / (1 - a_t), math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
        var_1 = (1 - abar_by_hand(s, 0)) / (1 - abar_by_hand(s, 1)) * s.betas[1].item()
        small = (1 - a_prev) / (1 - a_t) * beta if t > 0 else var_1
        if variance == "fixed_small":
            model_var = torch.full_like(x0, small)
        elif variance == "fixed_large":
            model_var = torch.full_like(x0, beta if t > 0 else var_1)
        else:
            f = (out[:, x0.shape[1]:] + 1) / 2
            model_var = torch.exp(f * math.log(beta) + (1 - f) * math.log(small))
        p = Normal(c0 * x0_hat + ct * x_t, model_var.sqrt())
        if t > 0:
            q = Normal(c0 * x0 + ct * x_t, math.sqrt(small))
            nats = kl_divergence(q, p).sum(1)
        else:
            lo = torch.where(x0 < -0.999, torch.tensor(-math.inf, dtype=x0.dtype), x0 - 1 / 255)
            hi = torch.where(x0 > 0.999, torch.tensor(math.inf, dtype=x0.dtype), x0 + 1 / 255)
            nats = -(p.cdf(hi) - p.cdf(lo)).log().sum(1)
        total += nats / (D * math.log(2))
    a_T = abar_by_hand(s, T - 1)
    prior = kl_divergence(Normal(math.sqrt(a_T) * x0, math.sqrt(1 - a_T)), Normal(0.0, 1.0)).sum(1)
    return total + prior / (D * math.log(2))


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range"])
def test_vlb_in_bits_per_dim_is_the_sum_of_per_step_terms(variance):
    x0 = quantised((5, 3), seed=4)
    vlb = diffusion.vlb_bits_per_dim(toy_model(variance), x0, SHORT, variance=variance,
                                     generator=torch.Generator().manual_seed(9))
    assert vlb.terms.shape == (5, SHORT.T) and vlb.total.shape == (5,)
    assert torch.allclose(vlb.total, vlb.terms.sum(1) + vlb.prior)
    expected = vlb_by_hand(toy_model(variance), x0, SHORT, variance, seed=9)
    assert torch.allclose(vlb.total, expected, rtol=1e-6)


def test_a_perfect_model_pays_only_the_prior_and_the_decoder():
    c = quantised((1, 4), seed=5)
    x0 = c.expand(3, 4)

    def oracle(x_t, t):
        a = SHORT.alpha_bar[t][:, None]
        return (x_t - a.sqrt() * c) / (1 - a).sqrt()

    vlb = diffusion.vlb_bits_per_dim(oracle, x0, SHORT, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(vlb.terms[:, 1:], torch.zeros(3, SHORT.T - 1, dtype=torch.float64), atol=1e-9)
    # the decoder's mean is exactly x0, centred in its bin
    beta_tilde_1 = (1 - SHORT.alpha_bar[0].item()) / (1 - SHORT.alpha_bar[1].item()) * SHORT.betas[1].item()
    std = math.sqrt(beta_tilde_1)
    bin_mass = Normal(0.0, std).cdf(torch.tensor(1 / 255)) - Normal(0.0, std).cdf(torch.tensor(-1 / 255))
    tails = (c.abs() > 0.999).double()  # an open tail bin holds more mass than the centred bin
    tail_mass = Normal(0.0, std).cdf(torch.tensor(1 / 255))
    expected_bits = -(tails * tail_mass.log() + (1 - tails) * bin_mass.log()).mean() / math.log(2)
    assert torch.allclose(vlb.terms[:, 0], expected_bits.expand(3).double(), atol=1e-9)


def test_prior_term_is_zero_for_a_zero_terminal_snr_schedule():
    from minildm.schedules import rescale_zero_terminal_snr

    s = NoiseSchedule(rescale_zero_terminal_snr(make_betas("linear", 12, 1e-3, 0.3)))
    assert torch.allclose(diffusion.prior_bpd(s, quantised((2, 3), seed=1)), torch.zeros(2, dtype=torch.float64))
    assert (diffusion.prior_bpd(SHORT, quantised((2, 3), seed=1)) > 0).all()


# ---------------------------------------------------------------- L_hybrid


def test_hybrid_loss_is_simple_plus_weighted_vlb_estimate():
    x0 = quantised((6, 2), seed=6)
    t, noise = torch.tensor([0, 1, 3, 5, 8, 11]), torch.randn(6, 2, dtype=torch.float64)
    model = toy_model("learned_range")
    hybrid = diffusion.loss_hybrid(model, x0, SHORT, t=t, noise=noise)
    x_t = SHORT.q_sample(x0, t, noise)
    out = model(x_t, t)
    simple = ((out[:, :2] - noise) ** 2).mean()
    l_t = diffusion.vlb_terms(SHORT, out, x0, x_t, t, variance="learned_range")
    assert hybrid.item() == pytest.approx((simple + 0.001 * SHORT.T * l_t.mean()).item(), rel=1e-10)


def test_hybrid_loss_trains_the_mean_only_through_l_simple():
    x0 = quantised((4, 2), seed=7)
    t, noise = torch.tensor([0, 2, 6, 11]), torch.randn(4, 2, dtype=torch.float64)
    output = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)  # (B, 2C): eps, then v

    def model(x_t, _t):
        return output * 1.0

    diffusion.loss_hybrid(model, x0, SHORT, t=t, noise=noise).backward()
    hybrid_grad = output.grad.clone()
    output.grad = None
    diffusion.loss_simple(lambda x_t, _t: output[:, :2], x0, SHORT, t=t, noise=noise).backward()
    assert torch.allclose(hybrid_grad[:, :2], output.grad[:, :2], atol=1e-12)
    assert hybrid_grad[:, 2:].abs().sum() > 0  # the variance does learn from the VLB
    # without the stop-gradient the VLB would move the mean too
    x_t = SHORT.q_sample(x0, t, noise)
    vlb = diffusion.vlb_terms(SHORT, output, x0, x_t, t, variance="learned_range").mean()
    assert torch.autograd.grad(vlb, output)[0][:, :2].abs().sum() > 1e-3


# ---------------------------------------------------------------- bad input


def test_bad_inputs_are_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"unknown variance 'learned'.*learned_range"):
        diffusion.p_mean_variance(SHORT, x, 3, x, variance="learned")
    with pytest.raises(ValueError, match="twice x_t's channels"):
        diffusion.p_mean_variance(SHORT, torch.zeros(2, 5), 3, x, variance="learned_range")
    with pytest.raises(ValueError, match="clip must be a positive"):
        diffusion.p_mean_variance(SHORT, x, 3, x, clip=0.0)
    with pytest.raises(ValueError, match="x has shape"):
        diffusion.discretized_gaussian_log_likelihood(x, torch.zeros(2, 4), x)
    with pytest.raises(ValueError, match="x0 must have a batch dimension"):
        diffusion.vlb_terms(SHORT, torch.zeros(2), torch.zeros(2), torch.zeros(2), 3)
    with pytest.raises(ValueError, match=r"unknown prediction 'noise'"):
        diffusion.loss_simple(lambda x_t, t: x_t, x, SHORT, prediction="noise")
    with pytest.raises(ValueError, match="model output has shape .* loss_hybrid"):
        diffusion.loss_simple(lambda x_t, t: torch.cat([x_t, x_t], 1), x, SHORT)
    with pytest.raises(ValueError, match="twice x_t's channels"):
        diffusion.loss_hybrid(lambda x_t, t: x_t, x, SHORT)
    with pytest.raises(TypeError, match="at least one torch.Tensor"):
        diffusion.normal_kl(0.0, 0.0, 1.0, 0.0)
