"""The recipes of the shipped checkpoints: how each named model is built and trained.

Importing this module registers every recipe with ``minildm.pretrained``; ``pretrained``
imports it on first use, so ``pretrained.load(name)`` and ``minildm train NAME`` see them all.

A diffusion recipe's ``config`` holds, beside the network's own arguments, the noise
``schedule`` and ``T`` it was trained with (and the ``dataset``), so a lesson samples the
shipped model with the schedule it learned: ``noise_schedule(name)``.

toy2d-ddpm  Ho et al. (2020) on two moons: Algorithm 1 with a ToyMLP eps-model, linear schedule,
            T = 1000; sampled by Algorithm 2. Lesson 04 trains the same model briefly, then loads
            this one to show what longer training gives.
digits-ddpm A class-conditional DDPM on 16x16 digits: a UNet eps-model with a class embedding,
            the label dropped to the null class 10% of the time so that one network is both
            conditional and unconditional (classifier-free guidance, Ho & Salimans 2022),
            cosine schedule (Nichol & Dhariwal 2021), T = 1000. Scored by how often a classifier
            trained on the real digits names the class the sample was asked for.
"""

from __future__ import annotations

import numpy as np
import torch

from minildm import data, diffusion, metrics, models, pretrained, samplers, schedules, train, unet


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


# ---------------------------------------------------------------------------- digits-ddpm

def digits_denoiser(*, dataset: str, schedule: str, T: int, size: int, label_dropout: float,
                    **unet_config) -> unet.UNet:
    """The class-conditional eps-model of the digits DDPM: ``UNet(**unet_config)``.

    ``dataset``, ``schedule``, ``T``, ``size`` and ``label_dropout`` build nothing; they record
    what the network was trained on and how, so that a checkpoint file names them.
    """
    if dataset != "digits":
        raise ValueError(f"dataset must be 'digits', got {dataset!r}")
    if schedule not in schedules.SCHEDULES:
        raise ValueError(f"schedule must be one of {list(schedules.SCHEDULES)}, got {schedule!r}")
    return unet.UNet(**unet_config)


DIGITS_CONFIG = {"dataset": "digits", "size": 16, "schedule": "cosine", "T": 1000, "label_dropout": 0.1,
                 "in_channels": 1, "base": 32, "mults": [1, 2, 2], "attn_levels": [2], "num_res_blocks": 1,
                 "num_classes": 10}
# training run and its scoring; "smoke" only proves the code path (tests, CI)
DIGITS_SIZES = {
    "full": {"steps": 2_000, "n_eval": 300, "sample_steps": 50, "guidance_scales": [1.0, 2.0, 3.0]},
    "smoke": {"steps": 5, "n_eval": 20, "sample_steps": 4, "guidance_scales": [1.0, 2.0]},
}
DIGITS_TRAIN = {"batch_size": 64, "lr": 1e-3, "ema_decay": 0.995, "grad_clip": 1.0, "seed": 0}


def _digits_classifier():
    """Logistic regression on the 16x16 pixels of the train split; returns (classifier, test accuracy)."""
    from sklearn.linear_model import LogisticRegression

    size = DIGITS_CONFIG["size"]
    x_train, y_train = data.digits(size, split="train")  # (1437, 1, 16, 16), (1437,)
    x_test, y_test = data.digits(size, split="test")  # (360, 1, 16, 16), (360,)
    classifier = LogisticRegression(C=0.1, max_iter=2_000).fit(x_train.flatten(1).numpy(), y_train.numpy())
    return classifier, float(classifier.score(x_test.flatten(1).numpy(), y_test.numpy()))


def digits_samples(model, n: int, *, guidance_scale: float = 1.0, steps: int = 50, seed: int = 0):
    """``n`` DDIM samples (eta = 0, x0_hat clipped to [-1, 1]) asked for classes 0..9 in turn.

    guidance_scale = 1 is the conditional model alone; above 1 classifier-free guidance pushes
    away from the null-class prediction. Returns (images (n, 1, 16, 16) in [-1, 1], labels (n,)).
    """
    config = DIGITS_CONFIG
    schedule = schedules.NoiseSchedule(schedules.make_betas(config["schedule"], config["T"]))
    y = torch.arange(n) % config["num_classes"]  # (n,)
    guided = {} if guidance_scale == 1 else {
        "guidance_scale": guidance_scale, "uncond_kwargs": {"y": torch.full_like(y, config["num_classes"])}}
    x = samplers.sample(model, schedule, (n, 1, config["size"], config["size"]), sampler="ddim", steps=steps,
                        clip=1.0, generator=torch.Generator().manual_seed(seed), model_kwargs={"y": y}, **guided)
    return x.clamp(-1, 1), y


def train_digits_ddpm(profile: str | None, progress: bool):
    """L_simple with label dropout on the digits' train split with ``train.fit``; returns the EMA model.

    Metrics: the test accuracy of ``_digits_classifier`` and, per guidance scale, the fraction
    of ``n_eval`` samples (classes 0..9 in turn) it labels with the class they were asked for.
    """
    sizes = DIGITS_SIZES["smoke" if profile == "smoke" else "full"]
    config = DIGITS_CONFIG
    x_train, y_train = data.digits(config["size"], split="train")  # (1437, 1, 16, 16), (1437,)
    schedule = schedules.NoiseSchedule(schedules.make_betas(config["schedule"], config["T"]))
    null_class = config["num_classes"]

    def loss_fn(net, batch, generator):
        x0, y = batch
        # y <- null class with probability label_dropout: the unconditional model is the same network
        dropped = torch.rand(y.shape, generator=generator) < config["label_dropout"]  # (B,)
        y = torch.where(dropped.to(y.device), torch.full_like(y, null_class), y)  # (B,)
        return diffusion.loss_simple(net, x0, schedule, generator=generator, model_kwargs={"y": y})

    torch.manual_seed(DIGITS_TRAIN["seed"])  # the initial weights
    model = digits_denoiser(**config)
    result = train.fit(model, loss_fn, (x_train, y_train), steps=sizes["steps"], device="cpu", progress=progress,
                       **DIGITS_TRAIN)
    ema = result.ema
    classifier, accuracy = _digits_classifier()
    scores = {"classifier_test_accuracy": accuracy}
    for scale in sizes["guidance_scales"]:
        x, y = digits_samples(ema, sizes["n_eval"], guidance_scale=scale, steps=sizes["sample_steps"])
        predicted = classifier.predict(x.flatten(1).numpy())
        scores[f"agreement_guidance_{scale:g}"] = float(np.mean(predicted == y.numpy()))
    scores["loss_last_500"] = sum(result.losses[-500:]) / len(result.losses[-500:])
    return ema, {k: round(v, 6) for k, v in scores.items()}, result.step


DIGITS_DDPM = pretrained.register(pretrained.Recipe(
    name="digits-ddpm",
    description="class-conditional DDPM (eps-prediction UNet, cosine schedule, T = 1000, 10% label dropout for "
                "classifier-free guidance) on the 16x16 digits",
    build=digits_denoiser,
    config=DIGITS_CONFIG,
    train=train_digits_ddpm,
    recipe=("Ho et al. Algorithm 1 with class labels on data.digits(16, split='train') (1437 images): "
            "UNet(in_channels=1, base=32, mults=(1, 2, 2), attention at 4x4, 1 res block per level, "
            "num_classes=10), label -> null class (10) with probability 0.1, L_simple with eps-prediction, "
            "cosine betas (Nichol & Dhariwal), T = 1000; train.fit for 2000 AdamW steps, batch 64, lr 1e-3, "
            "grad clip 1.0, EMA 0.995 (the EMA weights are shipped), seed 0, on the CPU. Metrics: "
            "LogisticRegression(C=0.1) on the train split's pixels, its test-split accuracy, and its agreement "
            "with the class asked for on 300 samples (30 per class; DDIM, 50 steps, eta 0, x0 clipped to "
            "[-1, 1]) at guidance scales 1, 2, 3"),
))
