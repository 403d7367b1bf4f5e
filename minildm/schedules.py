"""Noise schedules and the forward process: how much signal survives at each step.

A diffusion model destroys data in T small Gaussian steps (Ho et al. 2020, eq. 2):

    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

Everything downstream depends only on alpha_bar_t = prod_{s<=t} (1 - beta_s), because the
steps compose into one closed form (Ho et al. eq. 4):

    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

Ho et al. use a linear beta schedule; Latent/Stable Diffusion a "scaled linear" one (linear in
sqrt(beta)); Nichol & Dhariwal (2021, eq. 17) a cosine alpha_bar that destroys information more
slowly; GeoDiff a sigmoid. Lin et al. (2023) rescale any of them so the last step leaves no
signal at all (zero terminal SNR).

Conventions: timesteps are 0-indexed, t = 0 ... T-1, as in diffusers; ``t`` is a Python int or
a LongTensor of shape [B] (one timestep per sample). The schedule's attributes are float64 (for
plots and tables), but every coefficient is computed in the dtype of the input, as diffusers
does; float64 inputs give exact results. For a float32 tensor the betas are cast to float32,
alpha_bar = cumprod(1 - beta) is taken in float32, and each coefficient follows diffusers' own
order of operations, so a float32 step matches a stock diffusers step to float32 rounding
(tests/test_parity_diffusers.py). Half-precision inputs compute in float32 and are cast at the
end. The price of float32 is cancellation at small t, where alpha_bar_t is close to 1: a DDPM
step at t = 1 sits ~5e-5 (linear) to ~7e-4 (cosine) away from the exact float64 value, in
diffusers and here alike.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")
PREDICTIONS = ("eps", "x0", "v")


def make_betas(name: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """The T betas of a named schedule, float64, shape (T,).

    The grid-based schedules are laid out in float32 exactly as diffusers lays them out (and
    then widened to float64), so a float32 run matches diffusers' schedulers bit for bit; the
    difference from a float64 grid is below 2e-9.

    ``"linear"`` (Ho et al.), ``"scaled_linear"`` (Stable Diffusion's "linear"),
    ``"cosine"`` (Nichol & Dhariwal, s = 0.008, beta capped at 0.999; ignores beta_start and
    beta_end; diffusers calls it ``squaredcos_cap_v2``) or ``"sigmoid"`` (as diffusers'
    DDPMScheduler: a sigmoid over [-6, 6] scaled into [beta_start, beta_end]).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a schedule name (str), got {type(name).__name__}")
    if isinstance(T, bool) or not isinstance(T, numbers.Integral):
        raise TypeError(f"T must be an int number of steps, got {type(T).__name__}")
    if T < 1:
        raise ValueError(f"T must be a positive number of steps, got {T}")
    for arg, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0 < value < 1:
            raise ValueError(f"{arg} must lie in (0, 1), got {value}")
    T = int(T)
    if name == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32).double()
    if name == "scaled_linear":
        # beta_t = (linspace(sqrt(beta_start), sqrt(beta_end)))^2
        return (torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2).double()
    if name == "cosine":
        # abar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2),  beta_t = min(1 - abar(t+1) / abar(t), 0.999)
        steps = torch.arange(T + 1, dtype=torch.float64) / T
        alpha_bar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    if name == "sigmoid":
        # beta_t = sigmoid(linspace(-6, 6)) (beta_end - beta_start) + beta_start
        ramp = torch.sigmoid(torch.linspace(-6, 6, T, dtype=torch.float32))
        return (ramp * (beta_end - beta_start) + beta_start).double()
    raise ValueError(f"unknown schedule {name!r}; choose from {SCHEDULES}")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so the last step has alpha_bar = 0 (Lin et al. 2023, Algorithm 1).

    sqrt(alpha_bar) is shifted so its last value is 0 and scaled so its first value is
    unchanged; then beta[-1] = 1. Computed in float64, returned in the dtype of ``betas``.
    A model trained on such a schedule cannot predict eps at the last step (x_T carries no
    x0 to recover): train it with ``prediction="v"`` or ``"x0"``.
    """
    betas = _check_betas(betas, allow_last_one=False)
    if betas.numel() < 2:
        raise ValueError("betas must hold at least 2 steps to rescale to zero terminal SNR")
    sqrt_alpha_bar = torch.cumprod(1 - betas.double(), dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    # sqrt(abar)' = (sqrt(abar) - sqrt(abar_T)) * sqrt(abar_0) / (sqrt(abar_0) - sqrt(abar_T))
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    # alpha_t = abar_t / abar_{t-1}, alpha_0 = abar_0
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return (1 - alphas).to(betas.dtype)


def _check_betas(betas, allow_last_one: bool) -> Tensor:
    """betas as a 1-D tensor with every value in (0, 1) (the last may be 1 if allowed)."""
    if not isinstance(betas, Tensor):
        try:
            betas = torch.as_tensor(betas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"betas must be a 1-D tensor of floats, got {type(betas).__name__}") from err
    if not betas.dtype.is_floating_point:
        raise TypeError(f"betas must be a floating-point tensor, got dtype {betas.dtype}")
    if betas.dim() != 1 or betas.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
    b = betas.detach().double().cpu()
    last_too_big = b[-1] > 1 if allow_last_one else b[-1] >= 1
    if not torch.isfinite(b).all() or (b <= 0).any() or (b[:-1] >= 1).any() or last_too_big:
        allowed = "(0, 1), the last one in (0, 1]" if allow_last_one else "(0, 1)"
        raise ValueError(f"betas must lie in {allowed}; got min {b.min().item()}, max {b.max().item()}")
    return betas


def per_sample(coef: Tensor, x: Tensor) -> Tensor:
    """A scalar or per-sample coefficient (B,) as x's dtype and device, shaped (B, 1, ..., 1)."""
    coef = coef.to(device=x.device, dtype=x.dtype)
    if coef.dim() == 0:
        return coef
    return coef.reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)


def noise_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device, moved to x's.

    On the CPU, ``torch.randn(shape, generator=torch.Generator().manual_seed(k))`` is exactly
    what diffusers draws, so seeded runs can be compared.
    """
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


class NoiseSchedule:
    """A beta schedule with everything derived from it: the forward process, the posterior,
    and conversions between eps / x0 / v predictions.

    Attributes (1-D float64 tensors of length T on the CPU): ``betas``, ``alphas`` = 1 - beta,
    ``alpha_bar`` = cumulative product of alphas, ``alpha_bar_prev`` (alpha_bar shifted right,
    with alpha_bar_prev[0] = 1), ``snr`` = alpha_bar / (1 - alpha_bar); and ``T``. The methods
    compute in the dtype of their input (float32 or float64; see the module docstring).
    """

    def __init__(self, betas):
        betas = _check_betas(betas, allow_last_one=True)
        self.betas = betas.detach().to("cpu", torch.float64)
        self.T = self.betas.numel()
        self.alphas = 1 - self.betas
        # alpha_bar_t = prod_{s <= t} alpha_s
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        # SNR(t) = alpha_bar_t / (1 - alpha_bar_t)
        self.snr = self.alpha_bar / (1 - self.alpha_bar)
        self._table_cache: dict[torch.dtype, tuple[Tensor, Tensor]] = {torch.float64: (self.betas, self.alpha_bar)}

    def _tables(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(betas, alpha_bar) on the CPU in the dtype that tensors of ``dtype`` compute in.

        float64 for float64, float32 for everything else. Built as diffusers builds its own:
        betas cast to that dtype, alpha_bar = cumprod(1 - betas) in it. Cached per dtype.
        """
        dtype = torch.float64 if dtype == torch.float64 else torch.float32
        if dtype not in self._table_cache:
            betas = self.betas.to(dtype)
            # alpha_bar_t = prod_{s <= t} (1 - beta_s), in float32 as diffusers
            self._table_cache[dtype] = (betas, torch.cumprod(1 - betas, dim=0))
        return self._table_cache[dtype]

    def __repr__(self) -> str:
        return f"NoiseSchedule(T={self.T}, beta {self.betas[0].item():.3g} -> {self.betas[-1].item():.3g})"

    def timestep(self, t, x: Tensor | None = None, name: str = "t", final_ok: bool = False) -> Tensor:
        """``t`` checked and returned as a CPU int64 tensor, shape () or (B,).

        t must be an int or an integer tensor of shape [B] with B = x.shape[0], with values in
        [0, T-1]; with ``final_ok`` negative values are allowed too (they mean "past the
        last step", i.e. x0 itself, as diffusers' prev_t = -1).
        """
        if isinstance(t, bool) or not isinstance(t, (numbers.Integral, Tensor)):
            raise TypeError(f"{name} must be a Python int or a LongTensor of shape [B], got {type(t).__name__}")
        if isinstance(t, Tensor):
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer timesteps, got dtype {t.dtype}")
            if t.dim() > 1:
                raise ValueError(f"{name} must be a scalar or of shape [B], got shape {tuple(t.shape)}")
            if t.dim() == 1 and x is not None and (x.dim() == 0 or t.shape[0] != x.shape[0]):
                raise ValueError(
                    f"{name} has {t.shape[0]} timesteps but x has batch shape {tuple(x.shape[:1])}; "
                    "give one timestep per sample"
                )
            t = t.detach().to("cpu", torch.int64)
        else:
            t = torch.tensor(int(t), dtype=torch.int64)
        low = t.min().item() if t.numel() else 0
        high = t.max().item() if t.numel() else 0
        if high > self.T - 1 or (low < 0 and not final_ok):
            lowest = "any negative value (= the final step)" if final_ok else "0"
            raise ValueError(f"{name} must lie in [{lowest}, {self.T - 1}] for T={self.T}, got {low}..{high}")
        return t

    def alpha_bars(self, t, x: Tensor | None = None, prev_t=None, final_alpha_bar: float = 1.0):
        """(alpha_bar_t, alpha_bar_prev) as CPU tensors of shape () or (B,), in x's compute dtype.

        That is float64 for a float64 x (or no x), float32 otherwise (see the module docstring).
        ``prev_t=None`` means the one-step previous timestep t - 1. A strided step passes
        prev_t < t explicitly; prev_t < 0 is the final step, whose alpha_bar_prev is
        ``final_alpha_bar`` (1: land on clean x0; Stable Diffusion uses alpha_bar[0]).
        """
        _, alpha_bar = self._tables(torch.float64 if x is None else x.dtype)
        t = self.timestep(t, x)
        prev = t - 1 if prev_t is None else self.timestep(prev_t, x, name="prev_t", final_ok=True)
        if prev_t is not None and (prev >= t).any():
            raise ValueError(f"prev_t must be smaller than t, got t={t.tolist()} and prev_t={prev.tolist()}")
        final = torch.tensor(float(final_alpha_bar), dtype=alpha_bar.dtype)
        return alpha_bar[t], torch.where(prev >= 0, alpha_bar[prev.clamp(min=0)], final)

    def q_sample(self, x0: Tensor, t, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Sample x_t ~ q(x_t | x0) in one shot (Ho et al. eq. 4); ``noise=None`` draws it."""
        if noise is None:
            noise = noise_like(x0, generator)
        _same_shape(noise=noise, x0=x0)
        alpha_bar, _ = self.alpha_bars(t, x0)
        # x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
        return per_sample(alpha_bar.sqrt(), x0) * x0 + per_sample((1 - alpha_bar).sqrt(), x0) * noise

    def velocity(self, x0: Tensor, t, noise: Tensor) -> Tensor:
        """The v-prediction target (Salimans & Ho 2022): v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0."""
        _same_shape(noise=noise, x0=x0)
        alpha_bar, _ = self.alpha_bars(t, x0)
        # v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0
        return per_sample(alpha_bar.sqrt(), x0) * noise - per_sample((1 - alpha_bar).sqrt(), x0) * x0

    def split_prediction(self, model_output: Tensor, x_t: Tensor, t, prediction: str = "eps"):
        """Turn a model output into both (x0_hat, eps_hat), for eps / x0 / v prediction.

        All three describe the same point: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
        With eps-prediction, x0 cannot be recovered where alpha_bar_t = 0 (the last step of a
        zero-terminal-SNR schedule): that raises ValueError rather than dividing by zero.
        """
        _check_prediction(prediction)
        _same_shape(model_output=model_output, x_t=x_t)
        alpha_bar, _ = self.alpha_bars(t, x_t)
        a, s = per_sample(alpha_bar.sqrt(), x_t), per_sample((1 - alpha_bar).sqrt(), x_t)
        if prediction == "eps":
            if (alpha_bar == 0).any():
                raise ValueError(
                    "prediction='eps' cannot recover x0 where alpha_bar_t = 0 (zero terminal SNR: x_T holds "
                    "no signal); train and sample with prediction='v' or 'x0' instead"
                )
            # x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)
            return (x_t - s * model_output) / a, model_output
        if prediction == "x0":
            # eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
            return model_output, (x_t - a * model_output) / s
        # x0 = sqrt(abar) x_t - sqrt(1 - abar) v,   eps = sqrt(abar) v + sqrt(1 - abar) x_t
        return a * x_t - s * model_output, a * model_output + s * x_t

    def q_posterior(self, x0: Tensor, x_t: Tensor, t, prev_t=None):
        """The posterior q(x_prev | x_t, x0) = N(mean, var): (mean, var, log_var).

        Ho et al. eq. 7, with beta'_t = 1 - abar_t / abar_prev so that strided steps
        (``prev_t`` < t - 1, as in respaced sampling) use the same formula; prev_t=None is the
        one-step posterior q(x_{t-1} | x_t, x0). Where the step lands on x0 (t = 0, or
        prev_t < 0) the variance is 0; ``log_var`` there is clipped as in DDPM's code: it takes
        the one-step value at t = 1 (beta_0 when T = 1), so it stays finite.
        """
        _same_shape(x0=x0, x_t=x_t)
        alpha_bar, alpha_bar_prev = self.alpha_bars(t, x_t, prev_t)
        # alpha'_t = abar_t / abar_prev,  beta'_t = 1 - alpha'_t     (in diffusers' order of operations)
        alpha = alpha_bar / alpha_bar_prev
        beta = 1 - alpha
        # mu~ = sqrt(abar_prev) beta' / (1 - abar_t) x0 + sqrt(alpha') (1 - abar_prev) / (1 - abar_t) x_t
        coef_x0 = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)
        coef_xt = alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)
        mean = per_sample(coef_x0, x_t) * x0 + per_sample(coef_xt, x_t) * x_t
        # beta~ = (1 - abar_prev) / (1 - abar_t) beta'
        var = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
        log_var = torch.where(var > 0, var, self._clipped_final_variance(var.dtype)).log()
        shape = torch.broadcast_shapes(x0.shape, x_t.shape)
        return mean, per_sample(var, x_t).expand(shape), per_sample(log_var, x_t).expand(shape)

    def _clipped_final_variance(self, dtype: torch.dtype) -> Tensor:
        """The variance DDPM's code uses in place of the 0 at t = 0: beta~_1 (beta_0 if T = 1)."""
        betas, alpha_bar = self._tables(dtype)
        if self.T == 1:
            return betas[0]
        # beta~_1 = (1 - abar_0) / (1 - abar_1) beta_1
        return (1 - alpha_bar[0]) / (1 - alpha_bar[1]) * betas[1]


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; choose from {PREDICTIONS}")


def _same_shape(**tensors: Tensor) -> None:
    """Raise a ValueError naming both arguments when two tensors differ in shape."""
    (name_a, a), (name_b, b) = tensors.items()
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; they must match"
        )
