"""The recipes of the shipped checkpoints: how each named model is built and trained.

Importing this module registers every recipe with ``minildm.pretrained``; ``pretrained``
imports it on first use, so ``pretrained.load(name)`` and ``minildm train NAME`` see them all.

A diffusion recipe's ``config`` holds, beside the network's own arguments, the noise
``schedule`` and ``T`` it was trained with (and the ``dataset``), so a lesson samples the
shipped model with the schedule it learned: ``noise_schedule(name)``.

toy2d-ddpm  Ho et al. (2020) on two moons: Algorithm 1 with a ToyMLP eps-model, linear schedule,
            T = 1000; sampled by Algorithm 2. Lesson 04 trains the same model briefly, then loads
            this one to show what longer training gives.
"""

from __future__ import annotations

import torch

from minildm import data, diffusion, metrics, models, pretrained, samplers, schedules, train


def noise_schedule(name: str) -> schedules.NoiseSchedule:
    """The noise schedule the model ``name`` was trained with (its config's ``schedule`` and ``T``)."""
    if name not in pretrained.REGISTRY:
        raise ValueError(f"unknown pretrained model {name!r}; registered: {sorted(pretrained.REGISTRY)}")
    config = pretrained.REGISTRY[name].config
    if "schedule" not in config or "T" not in config:
        raise ValueError(f"{name!r} is not a diffusion recipe: its config has no 'schedule' and 'T'")
    return schedules.NoiseSchedule(schedules.make_betas(config["schedule"], config["T"]))


# ---------------------------------------------------------------------------- toy2d-ddpm

def toy2d_denoiser(*, dataset: str, schedule: str, T: int, hidden: int, depth: int, time_dim: int) -> models.ToyMLP:
    """The eps-model of a 2-D toy DDPM: ``ToyMLP(dim=2, ...)``.

    ``dataset`` and ``schedule`` build nothing; they record what the network was trained on,
    so that a checkpoint file names its own data and noise schedule.
    """
    if dataset not in data.TOY2D:
        raise ValueError(f"dataset must be one of {list(data.TOY2D)}, got {dataset!r}")
    if schedule not in schedules.SCHEDULES:
        raise ValueError(f"schedule must be one of {list(schedules.SCHEDULES)}, got {schedule!r}")
    return models.ToyMLP(dim=2, hidden=hidden, depth=depth, time_dim=time_dim, T=T)


TOY2D_CONFIG = {"dataset": "moons", "schedule": "linear", "T": 1000, "hidden": 128, "depth": 3, "time_dim": 64}
# training run; "smoke" only proves the code path (tests, CI)
TOY2D_SIZES = {
    "full": {"steps": 10_000, "n_train": 20_000, "n_eval": 2_000, "sample_steps": None},
    "smoke": {"steps": 50, "n_train": 1_024, "n_eval": 256, "sample_steps": 50},
}
TOY2D_TRAIN = {"batch_size": 256, "lr": 2e-3, "ema_decay": 0.999, "grad_clip": 1.0, "seed": 0}


def toy2d_distances(samples: torch.Tensor, held_out: torch.Tensor) -> dict:
    """How far samples lie from held-out data: sliced Wasserstein-1 and unbiased MMD^2."""
    return {"sliced_wasserstein": metrics.sliced_wasserstein(samples, held_out,
                                                            generator=torch.Generator().manual_seed(0)),
            "mmd": metrics.mmd(samples, held_out)}


def train_toy2d_ddpm(profile: str | None, progress: bool):
    """Algorithm 1 on ``TOY2D_CONFIG["dataset"]`` with ``train.fit``; returns the EMA model.

    Metrics: distances of ``n_eval`` DDPM samples (all T steps) to ``n_eval`` held-out points
    (another seed), next to the same distances between two held-out draws (what a perfect
    model would score at this sample size), and the mean loss of the last 500 steps.
    """
    sizes = TOY2D_SIZES["smoke" if profile == "smoke" else "full"]
    config = TOY2D_CONFIG
    x_train = data.toy2d(config["dataset"], sizes["n_train"], seed=0)  # (N, 2)
    held_out = data.toy2d(config["dataset"], sizes["n_eval"], seed=1)  # (n_eval, 2)
    reference = data.toy2d(config["dataset"], sizes["n_eval"], seed=2)  # (n_eval, 2)
    schedule = schedules.NoiseSchedule(schedules.make_betas(config["schedule"], config["T"]))

    torch.manual_seed(TOY2D_TRAIN["seed"])  # the initial weights
    model = toy2d_denoiser(**config)
    result = train.fit(model, lambda net, x0, g: diffusion.loss_simple(net, x0, schedule, generator=g), x_train,
                       steps=sizes["steps"], device="cpu", progress=progress, **TOY2D_TRAIN)
    ema = result.ema
    samples = samplers.sample(ema, schedule, (sizes["n_eval"], 2), steps=sizes["sample_steps"],
                              generator=torch.Generator().manual_seed(0))  # (n_eval, 2)
    measured = toy2d_distances(samples, held_out)
    baseline = toy2d_distances(reference, held_out)
    scores = {**measured, **{f"{k}_data_vs_data": v for k, v in baseline.items()},
              "loss_last_500": sum(result.losses[-500:]) / len(result.losses[-500:])}
    return ema, {k: round(v, 6) for k, v in scores.items()}, result.step


TOY2D_DDPM = pretrained.register(pretrained.Recipe(
    name="toy2d-ddpm",
    description="DDPM (eps-prediction ToyMLP, linear schedule, T = 1000) on the two-moons toy data",
    build=toy2d_denoiser,
    config=TOY2D_CONFIG,
    train=train_toy2d_ddpm,
    recipe=("Ho et al. Algorithm 1 on data.toy2d('moons', 20000, seed=0): ToyMLP(hidden=128, depth=3, "
            "time_dim=64), L_simple with eps-prediction, linear betas 1e-4 -> 0.02, T = 1000; train.fit for "
            "10000 AdamW steps, batch 256, lr 2e-3, grad clip 1.0, EMA 0.999 (the EMA weights are shipped), "
            "seed 0, on the CPU. Metrics: 2000 DDPM samples (1000 steps) vs 2000 held-out points (seed 1)"),
))
