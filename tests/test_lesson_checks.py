"""The lesson 01 and 02 checks accept right answers and name each plausible mistake.

Each ``expect`` submits a wrong implementation a learner might write and asserts that the
check fails with a message naming that mistake (the word given), not just "wrong".
"""

import math

import pytest
import torch

from minildm import checks
from minildm.checks import lesson02 as L2


def ok(check, learner):
    check(learner)  # raises CheckFailed if a right answer is refused


def expect(check, learner, word):
    try:
        check(learner)
    except checks.CheckFailed as e:
        assert word in str(e), (word, str(e))
        return
    raise AssertionError(f"{check.__name__} accepted a wrong answer (expected a message about {word!r})")


def test_lesson01_checks_accept_solutions_and_name_mistakes():
    def alpha_bar_from_betas(betas): return torch.cumprod(1 - betas, dim=0)
    ok(checks.alpha_bar_from_betas, alpha_bar_from_betas)
    for m in [lambda betas: torch.cumprod(betas,0), lambda betas: 1-betas, lambda betas: 1-torch.cumsum(betas,0),
              lambda betas: torch.cat([torch.ones(1, dtype=betas.dtype), torch.cumprod(1-betas,0)[:-1]])]:
        expect(checks.alpha_bar_from_betas, m, "mistake")
    expect(checks.alpha_bar_from_betas, lambda betas: torch.cumprod(1-betas.float(),0), "dtype")

    def markov_step(x_prev, t, betas, noise):
        beta = betas[t]; return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise
    ok(checks.markov_step, markov_step)
    expect(checks.markov_step, lambda x_prev, t, betas, noise: (1-betas[t]).sqrt()*x_prev + betas[t]*noise, "variance")
    expect(checks.markov_step, lambda x_prev, t, betas, noise: (1-betas[t-1]).sqrt()*x_prev + betas[t-1].sqrt()*noise, "off by one")
    expect(checks.markov_step, lambda x_prev, t, betas, noise: (1-betas[t]).sqrt()*x_prev - betas[t].sqrt()*noise, "subtracted")
    expect(checks.markov_step, lambda x_prev, t, betas, noise: (1-betas[t])*x_prev + betas[t].sqrt()*noise, "square root")
    def ms_ab(x_prev, t, betas, noise):
        ab = torch.cumprod(1-betas,0)[t]; return ab.sqrt()*x_prev + (1-ab).sqrt()*noise
    expect(checks.markov_step, ms_ab, "alpha_bar")

    def q_sample(x0, t, alpha_bar, noise):
        abar = alpha_bar[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    ok(checks.q_sample, q_sample)
    def q_naive64(x0, t, alpha_bar, noise):  # no dtype cast, alpha_bar float32 -> fine
        abar = alpha_bar[t].view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    ok(checks.q_sample, q_naive64)
    def q_bcast(x0, t, alpha_bar, noise):
        abar = alpha_bar[t]
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    expect(checks.q_sample, q_bcast, "raised")
    def q_var(x0, t, alpha_bar, noise):
        abar = alpha_bar[t].view(-1, *([1] * (x0.dim() - 1))); return abar.sqrt() * x0 + (1 - abar) * noise
    expect(checks.q_sample, q_var, "variance")
    def q_off(x0, t, alpha_bar, noise):
        abar = alpha_bar[t-1].view(-1, *([1] * (x0.dim() - 1))); return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    expect(checks.q_sample, q_off, "off by one")
    def q_off2(x0, t, alpha_bar, noise):
        abar = alpha_bar[t+1].view(-1, *([1] * (x0.dim() - 1))); return abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    expect(checks.q_sample, q_off2, "")
    def q_swap(x0, t, alpha_bar, noise):
        abar = alpha_bar[t].view(-1, *([1] * (x0.dim() - 1))); return (1-abar).sqrt() * x0 + abar.sqrt() * noise
    expect(checks.q_sample, q_swap, "swapped")

    def noise_from_xt(x0, x_t, t, alpha_bar):
        abar = alpha_bar[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
    ok(checks.noise_from_xt, noise_from_xt)
    expect(checks.noise_from_xt, lambda x0, x_t, t, alpha_bar: -noise_from_xt(x0, x_t, t, alpha_bar), "sign")
    def n_var(x0, x_t, t, alpha_bar):
        abar = alpha_bar[t].view(-1, *([1] * (x0.dim() - 1))); return (x_t - abar.sqrt() * x0) / (1 - abar)
    expect(checks.noise_from_xt, n_var, "variance")
    def n_x0(x0, x_t, t, alpha_bar):
        abar = alpha_bar[t].view(-1, *([1] * (x0.dim() - 1))); return (x_t - x0) / (1 - abar).sqrt()
    expect(checks.noise_from_xt, n_x0, "factor")



def test_lesson02_checks_accept_solutions_and_name_mistakes():
    def log_snr(alpha_bar): return torch.log(alpha_bar) - torch.log1p(-alpha_bar)
    ok(checks.log_snr, log_snr)
    ok(checks.log_snr, lambda alpha_bar: torch.log(alpha_bar / (1 - alpha_bar)))
    expect(checks.log_snr, lambda alpha_bar: torch.log((1-alpha_bar) / alpha_bar), "noise-to-signal")
    expect(checks.log_snr, lambda alpha_bar: torch.log(alpha_bar.sqrt() / (1 - alpha_bar).sqrt()), "amplitude")
    expect(checks.log_snr, lambda alpha_bar: torch.log10(alpha_bar / (1 - alpha_bar)), "base 10")
    expect(checks.log_snr, lambda alpha_bar: alpha_bar / (1 - alpha_bar), "SNR itself")

    ok(checks.alpha_bar_from_log_snr, lambda lam: torch.sigmoid(lam))
    ok(checks.alpha_bar_from_log_snr, lambda lam: 1 / (1 + torch.exp(-lam)))
    expect(checks.alpha_bar_from_log_snr, lambda lam: torch.exp(lam) / (1 + torch.exp(lam)), "NaN")
    expect(checks.alpha_bar_from_log_snr, lambda lam: torch.exp(lam), "SNR")
    expect(checks.alpha_bar_from_log_snr, lambda lam: torch.sigmoid(-lam), "sign")

    def cosine_betas(T, s=0.008, max_beta=0.999):
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    ok(checks.cosine_betas, cosine_betas)
    def cos_noclamp(T, s=0.008, max_beta=0.999):
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1])
    expect(checks.cosine_betas, cos_noclamp, "cap")
    def cos_f32(T, s=0.008, max_beta=0.999): return cosine_betas(T, s, max_beta).float()
    expect(checks.cosine_betas, cos_f32, "dtype")
    def cos_nos(T, s=0.008, max_beta=0.999): return cosine_betas(T, 0.0, max_beta)
    expect(checks.cosine_betas, cos_nos, "offset")
    def cos_1(T, s=0.008, max_beta=0.999):
        u = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2)
        return (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    expect(checks.cosine_betas, cos_1, "squared")
    def cos_len(T, s=0.008, max_beta=0.999):
        u = torch.arange(T, dtype=torch.float64) / T
        f = torch.cos((u + s) / (1 + s) * math.pi / 2)**2
        return (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    expect(checks.cosine_betas, cos_len, "shape")

    def rescale(betas):
        a = torch.cumprod(1 - betas, 0).sqrt()
        first, last = a[0].clone(), a[-1].clone()
        abar = ((a - last) * first / (first - last)) ** 2
        return 1 - torch.cat([abar[:1], abar[1:] / abar[:-1]])
    ok(checks.rescale_zero_terminal_snr, rescale)
    expect(checks.rescale_zero_terminal_snr, L2._rescale_sqrt_free, "sqrt")
    expect(checks.rescale_zero_terminal_snr, L2._rescale_shift_only, "stretched")
    expect(checks.rescale_zero_terminal_snr, L2._rescale_first_alpha_one, "first beta")
    expect(checks.rescale_zero_terminal_snr, L2._rescale_alpha_bar_out, "alpha_bar returned")
    def nie(betas): raise NotImplementedError()
    with pytest.raises(NotImplementedError):  # the student version's placeholder passes through
        checks.rescale_zero_terminal_snr(nie)


def _function_checks():
    """(lesson, check name, reference, cases, mistakes, options) for every compare-based check.

    Each lesson module calls ``compare`` with its reference and its Mistakes; a spy in place of
    ``compare`` records those arguments, so every check of every lesson is covered here.
    """
    import importlib
    import pkgutil

    import minildm.checks as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("lesson"):
            continue
        module = importlib.import_module(f"minildm.checks.{info.name}")
        if not hasattr(module, "compare"):
            continue
        recorded = {}

        def spy(learner, reference, cases, *, name, mistakes=(), **options):
            recorded[name] = (reference, cases, tuple(mistakes), options)

        original, module.compare = module.compare, spy
        try:
            for check in module.__all__:
                try:
                    getattr(module, check)(lambda *args, **kwargs: None)
                except Exception:  # value checks or checks that do more than compare
                    pass
        finally:
            module.compare = original
        found += [(info.name, name, *args) for name, args in recorded.items()]
    return found


FUNCTION_CHECKS = _function_checks()


@pytest.mark.parametrize("lesson, name, reference, cases, mistakes, options", FUNCTION_CHECKS,
                         ids=[f"{c[0]}-{c[1]}" for c in FUNCTION_CHECKS])
def test_every_listed_mistake_is_named_as_itself(lesson, name, reference, cases, mistakes, options):
    # the reference passes its own check, and each Mistake, submitted as the learner's answer,
    # fails with that Mistake's name in the message (not some other diagnosis)
    checks.compare(reference, reference, cases, name=name, mistakes=mistakes, **options)
    for mistake in mistakes:
        with pytest.raises(checks.CheckFailed) as failure:
            checks.compare(mistake.fn, reference, cases, name=name, mistakes=mistakes, **options)
        assert mistake.name in str(failure.value), (mistake.name, str(failure.value).splitlines()[0])


def test_every_lesson_with_exercises_has_its_function_checks_covered():
    lessons = {c[0] for c in FUNCTION_CHECKS}
    assert {"lesson00", "lesson01", "lesson02", "lesson03", "lesson04", "lesson05", "lesson06", "lesson07", "lesson08", "lesson09", "lesson10", "lesson11", "lesson12", "lesson13", "lesson14"} <= lessons, lessons
