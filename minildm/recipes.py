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
shapes-vae  Stage 1 of latent diffusion: a KL-regularised autoencoder (f = 4) that maps 32x32
            shapes to 8x8x4 latents, trained with L1 + perceptual + a 1e-6 KL (Rombach et al. 2022);
            its latent scale factor is measured after training and saved with the weights.
shapes-clip A mini-CLIP (``minildm.text``) trained contrastively on shapes and their captions;
            its frozen per-token text features condition shapes-ldm.
shapes-ldm  Text-to-image latent diffusion on shapes: a UNet with spatial transformers on the
            scaled 8x8x4 latents of shapes-vae, cross-attending to shapes-clip's text features,
            captions dropped 10% of the time for classifier-free guidance (Rombach et al. 2022).
            Two (colour, shape) pairs are never shown (``data.HELD_OUT``): compositional
            generalisation is measured on them.
digits-classifier, shapes-classifier
            Small CNNs (``minildm.classifier``) trained in seconds: their predictions give label
            agreement, their pooled features are the space FID and KID are measured in (lesson 08).
"""

from __future__ import annotations

import numpy as np
import torch

from minildm import (autoencoders, classifier, controlnet, data, diffusion, judge, ldm, lora, metrics, models,
                     perceptual, pretrained, samplers, schedules, text, train, unet)


def noise_schedule(name: str) -> schedules.NoiseSchedule:
    """The noise schedule the model ``name`` was trained with (its config's ``schedule`` and ``T``)."""
    if name not in pretrained.REGISTRY:
        raise ValueError(f"unknown pretrained model {name!r}; registered: {sorted(pretrained.REGISTRY)}")
    config = pretrained.REGISTRY[name].config
    if "schedule" not in config or "T" not in config:
        raise ValueError(f"{name!r} is not a diffusion recipe: its config has no 'schedule' and 'T'")
    return noise_schedule_of(config)


def noise_schedule_of(config: dict) -> schedules.NoiseSchedule:
    """The noise schedule a diffusion recipe's config names."""
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
    schedule = noise_schedule_of(config)

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

def class_denoiser(*, dataset: str, schedule: str, T: int, size: int, label_dropout: float,
                   **unet_config) -> unet.UNet:
    """The class-conditional eps-model of digits-ddpm and shapes-ddpm: ``UNet(**unet_config)``.

    ``dataset``, ``schedule``, ``T``, ``size`` and ``label_dropout`` build nothing; they record
    what the network was trained on and how, so that a checkpoint file names them.
    """
    if dataset not in ("digits", "shapes"):
        raise ValueError(f"dataset must be 'digits' or 'shapes', got {dataset!r}")
    if schedule not in schedules.SCHEDULES:
        raise ValueError(f"schedule must be one of {list(schedules.SCHEDULES)}, got {schedule!r}")
    return unet.UNet(**unet_config)


CLASS_DDPM_TRAIN = {"batch_size": 64, "lr": 1e-3, "ema_decay": 0.995, "grad_clip": 1.0, "seed": 0}


def class_samples(model, config: dict, y: torch.Tensor, *, guidance_scale: float = 1.0, steps: int = 50,
                  seed: int = 0) -> torch.Tensor:
    """DDIM samples (eta = 0, x0_hat clipped to [-1, 1]) of a class-conditional recipe's model, one per label in y.

    ``config`` is the recipe's (its schedule, T, size, channels and null class = num_classes).
    guidance_scale = 1 is the conditional model alone; above 1 classifier-free guidance pushes
    away from the null-class prediction. The model may be on any device; the initial noise is
    drawn on the CPU (the same samples everywhere, up to the device's arithmetic). Returns
    images (len(y), C, size, size) in [-1, 1], on the CPU.
    """
    schedule = noise_schedule_of(config)
    y = y.to(next(model.parameters()).device)  # (N,) where the model is
    guided = {} if guidance_scale == 1 else {
        "guidance_scale": guidance_scale, "uncond_kwargs": {"y": torch.full_like(y, config["num_classes"])}}
    shape = (len(y), config["in_channels"], config["size"], config["size"])
    x = samplers.sample(model, schedule, shape, sampler="ddim", steps=steps, clip=1.0,
                        generator=torch.Generator().manual_seed(seed), model_kwargs={"y": y}, **guided)
    return x.clamp(-1, 1).cpu()


def train_class_ddpm(config: dict, images: torch.Tensor, labels: torch.Tensor, steps: int, progress: bool):
    """Ho et al. Algorithm 1 with labels: L_simple, each label dropped to the null class with
    probability ``config["label_dropout"]`` (Ho & Salimans 2022). Returns (EMA model, fit result)."""
    schedule = noise_schedule_of(config)
    null_class = config["num_classes"]

    def loss_fn(net, batch, generator):
        x0, y = batch
        # y <- null class with probability label_dropout: the unconditional model is the same network
        dropped = torch.rand(y.shape, generator=generator) < config["label_dropout"]  # (B,)
        y = torch.where(dropped.to(y.device), torch.full_like(y, null_class), y)  # (B,)
        return diffusion.loss_simple(net, x0, schedule, generator=generator, model_kwargs={"y": y})

    torch.manual_seed(CLASS_DDPM_TRAIN["seed"])  # the initial weights
    model = class_denoiser(**config)
    result = train.fit(model, loss_fn, (images, labels), steps=steps, device="cpu", progress=progress,
                       **CLASS_DDPM_TRAIN)
    return result.ema, result


def final_metrics(evaluate, model, result: train.TrainResult, profile: str | None) -> dict:
    """A diffusion recipe's manifest metrics: ``evaluate(model, profile)`` and the mean loss of the
    last 500 training steps."""
    scores = evaluate(model, profile)
    scores["loss_last_500"] = round(sum(result.losses[-500:]) / len(result.losses[-500:]), 6)
    return scores


DIGITS_CONFIG = {"dataset": "digits", "size": 16, "schedule": "cosine", "T": 1000, "label_dropout": 0.1,
                 "in_channels": 1, "base": 32, "mults": [1, 2, 2], "attn_levels": [2], "num_res_blocks": 1,
                 "num_classes": 10}
# training run and its scoring; "smoke" only proves the code path (tests, CI)
DIGITS_SIZES = {
    "full": {"steps": 2_000, "n_eval": 500, "sample_steps": 50, "guidance_scales": [1.0, 1.5, 2.0, 3.0]},
    "smoke": {"steps": 5, "n_eval": 20, "sample_steps": 4, "guidance_scales": [1.0, 2.0]},
}


def digits_samples(model, n: int, *, guidance_scale: float = 1.0, steps: int = 50, seed: int = 0):
    """``n`` samples of digits-ddpm asked for classes 0..9 in turn: (images (n, 1, 16, 16), labels (n,))."""
    y = torch.arange(n) % DIGITS_CONFIG["num_classes"]  # (n,)
    return class_samples(model, DIGITS_CONFIG, y, guidance_scale=guidance_scale, steps=steps, seed=seed), y


def evaluate_digits_ddpm(model, profile: str | None) -> dict:
    """Per guidance scale, the fraction of ``n_eval`` samples (classes 0..9 in turn) that the
    shipped digits-classifier labels with the class asked for."""
    sizes = DIGITS_SIZES["smoke" if profile == "smoke" else "full"]
    judge = pretrained.load("digits-classifier", device="cpu", progress=False)
    scores = {}
    for scale in sizes["guidance_scales"]:
        x, y = digits_samples(model, sizes["n_eval"], guidance_scale=scale, steps=sizes["sample_steps"])
        scores[f"agreement_guidance_{scale:g}"] = round(metrics.agreement(judge, x, y), 6)
    return scores


def train_digits_ddpm(profile: str | None, progress: bool):
    """The digits' train split; metrics: ``evaluate_digits_ddpm`` and the mean loss of the last 500 steps."""
    sizes = DIGITS_SIZES["smoke" if profile == "smoke" else "full"]
    x_train, y_train = data.digits(DIGITS_CONFIG["size"], split="train")  # (1437, 1, 16, 16), (1437,)
    ema, result = train_class_ddpm(DIGITS_CONFIG, x_train, y_train, sizes["steps"], progress)
    return ema, final_metrics(evaluate_digits_ddpm, ema, result, profile), result.step


DIGITS_DDPM = pretrained.register(pretrained.Recipe(
    name="digits-ddpm",
    description="class-conditional DDPM (eps-prediction UNet, cosine schedule, T = 1000, 10% label dropout for "
                "classifier-free guidance) on the 16x16 digits",
    build=class_denoiser,
    config=DIGITS_CONFIG,
    train=train_digits_ddpm,
    recipe=("Ho et al. Algorithm 1 with class labels on data.digits(16, split='train') (1437 images): "
            "UNet(in_channels=1, base=32, mults=(1, 2, 2), attention at 4x4, 1 res block per level, "
            "num_classes=10), label -> null class (10) with probability 0.1, L_simple with eps-prediction, "
            "cosine betas (Nichol & Dhariwal), T = 1000; train.fit for 2000 AdamW steps, batch 64, lr 1e-3, "
            "grad clip 1.0, EMA 0.995 (the EMA weights are shipped), seed 0, on the CPU. Metrics: agreement "
            "of the shipped digits-classifier with the class asked for on 500 samples (50 per class; DDIM, "
            "50 steps, eta 0, x0 clipped to [-1, 1]) at guidance scales 1, 1.5, 2, 3"),
    evaluate=evaluate_digits_ddpm,
))


# ---------------------------------------------------------------------------- shapes-ddpm

SHAPES_DDPM_CONFIG = {"dataset": "shapes", "size": 16, "schedule": "cosine", "T": 1000, "label_dropout": 0.1,
                      "in_channels": 3, "base": 32, "mults": [1, 2, 2], "attn_levels": [2], "num_res_blocks": 1,
                      "num_classes": len(data.SHAPES) * len(data.COLOURS)}
SHAPES_DDPM_SIZES = {
    "full": {"steps": 3_000, "n_data": 20_000, "n_eval": 300, "sample_steps": 50, "guidance_scales": [1.0, 2.0, 3.0]},
    "smoke": {"steps": 5, "n_data": 256, "n_eval": 15, "sample_steps": 4, "guidance_scales": [1.0, 2.0]},
}


def shapes_class(shape, colour):
    """The class index of a (shape, colour) pair: shape index * 5 + colour index (15 classes)."""
    return data.SHAPES.index(shape) * len(data.COLOURS) + list(data.COLOURS).index(colour)


def shapes_class_names() -> list[tuple[str, str]]:
    """(shape, colour) of each class index of shapes-ddpm."""
    return [(shape, colour) for shape in data.SHAPES for colour in data.COLOURS]


def shapes_samples(model, n: int, *, guidance_scale: float = 1.0, steps: int = 50, seed: int = 0):
    """``n`` samples of shapes-ddpm asked for the 15 (shape, colour) classes in turn: (images, classes (n,))."""
    y = torch.arange(n) % SHAPES_DDPM_CONFIG["num_classes"]  # (n,)
    return class_samples(model, SHAPES_DDPM_CONFIG, y, guidance_scale=guidance_scale, steps=steps, seed=seed), y


def shapes_adherence(images: torch.Tensor, classes: torch.Tensor) -> dict:
    """The fraction of images in which the shapes judge reads one object of the class's shape, colour, both."""
    names = shapes_class_names()
    hits = {"shape": [], "colour": [], "both": []}
    for scene, c in zip(judge.read(images), classes.tolist()):
        shape, colour = names[c]
        one = len(scene["objects"]) == 1
        got_shape = one and scene["objects"][0]["shape"] == shape
        got_colour = one and scene["objects"][0]["colour"] == colour
        hits["shape"].append(got_shape)
        hits["colour"].append(got_colour)
        hits["both"].append(got_shape and got_colour)
    return {key: float(np.mean(v)) for key, v in hits.items()}


def classifier_adherence(reader: classifier.Classifier, images: torch.Tensor, classes: torch.Tensor) -> dict:
    """The fraction of images whose shape, colour, and both, the shapes classifier reads as the class's."""
    names = shapes_class_names()
    shape = torch.tensor([data.ALL_SHAPES.index(names[c][0]) for c in classes.tolist()])  # (N,)
    colour = torch.tensor([list(data.COLOURS).index(names[c][1]) for c in classes.tolist()])  # (N,)
    predicted = reader.predict(images)
    right_shape, right_colour = predicted["shape"] == shape, predicted["colour"] == colour
    return {"shape": float(right_shape.double().mean()), "colour": float(right_colour.double().mean()),
            "both": float((right_shape & right_colour).double().mean())}


def evaluate_shapes_ddpm(model, profile: str | None) -> dict:
    """Per guidance scale, on ``n_eval`` samples (15 classes in turn): the shapes judge's and the
    shapes classifier's readings of shape and colour, and FID against as many new real images in
    the classifier's features. Two readers, because the judge, exact on rendered images, is
    thrown by what a 16x16 model draws (blocky circles, grey backgrounds): lesson 08 shows both."""
    sizes = SHAPES_DDPM_SIZES["smoke" if profile == "smoke" else "full"]
    features = pretrained.load("shapes-classifier", device="cpu", progress=False)
    real = data.shapes(sizes["n_eval"], size=SHAPES_DDPM_CONFIG["size"], seed=1).images
    scores = {}
    for scale in sizes["guidance_scales"]:
        x, y = shapes_samples(model, sizes["n_eval"], guidance_scale=scale, steps=sizes["sample_steps"])
        scores |= {f"judge_{key}_guidance_{scale:g}": v for key, v in shapes_adherence(x, y).items()}
        scores |= {f"classifier_{key}_guidance_{scale:g}": v
                   for key, v in classifier_adherence(features, x, y).items()}
        scores[f"fid_guidance_{scale:g}"] = metrics.fid(real, x, features)
    return {k: round(v, 6) for k, v in scores.items()}


def train_shapes_ddpm(profile: str | None, progress: bool):
    """One-object 16x16 shapes, labelled by (shape, colour); metrics: ``evaluate_shapes_ddpm`` and
    the mean loss of the last 500 steps."""
    sizes = SHAPES_DDPM_SIZES["smoke" if profile == "smoke" else "full"]
    batch = data.shapes(sizes["n_data"], size=SHAPES_DDPM_CONFIG["size"], seed=0)
    labels = torch.tensor([shapes_class(a["objects"][0]["shape"], a["objects"][0]["colour"])
                           for a in batch.attributes])  # (N,)
    ema, result = train_class_ddpm(SHAPES_DDPM_CONFIG, batch.images, labels, sizes["steps"], progress)
    return ema, final_metrics(evaluate_shapes_ddpm, ema, result, profile), result.step


SHAPES_DDPM = pretrained.register(pretrained.Recipe(
    name="shapes-ddpm",
    description="class-conditional pixel-space DDPM on 16x16 one-object shapes, one class per (shape, colour) "
                "(15 classes; size, position and background left to chance)",
    build=class_denoiser,
    config=SHAPES_DDPM_CONFIG,
    train=train_shapes_ddpm,
    recipe=("Ho et al. Algorithm 1 with class labels on data.shapes(20000, size=16, seed=0), class = "
            "shape index * 5 + colour index: UNet(in_channels=3, base=32, mults=(1, 2, 2), attention at 4x4, "
            "1 res block per level, num_classes=15), label -> null class (15) with probability 0.1, L_simple "
            "with eps-prediction, cosine betas, T = 1000; train.fit for 3000 AdamW steps, batch 64, lr 1e-3, "
            "grad clip 1.0, EMA 0.995 (shipped), seed 0, on the CPU. Metrics on 300 samples (20 per class; "
            "DDIM 50 steps, eta 0, x0 clipped) at guidance scales 1, 2, 3: the shapes judge's and the "
            "shapes-classifier's shape / colour / both rates, and FID against 300 new real images (seed 1) "
            "in shapes-classifier features"),
    evaluate=evaluate_shapes_ddpm,
))


# ---------------------------------------------------------------------------- classifiers

def _shifted(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Each image moved by a random whole-pixel offset in [-max_shift, max_shift]^2, edges replicated."""
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, [max_shift] * 4, mode="replicate")  # (B, C, H + 2m, W + 2m)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def _fit_classifier(net: classifier.Classifier, images: torch.Tensor, labels: dict, augment, steps: int,
                    progress: bool) -> int:
    """Train ``net`` in place: cross-entropy over every head, ``train.fit`` (AdamW, lr 2e-3, batch 128,
    seed 0); returns the optimizer steps done."""
    heads = list(labels)

    def loss_fn(model, batch, generator):
        x, *ys = batch
        return classifier.cross_entropy(model(augment(x, generator)), dict(zip(heads, ys)))

    return train.fit(net, loss_fn, (images, *labels.values()), steps=steps, batch_size=128, lr=2e-3,
                     grad_clip=1.0, seed=0, device="cpu", progress=progress).step


DIGITS_CLASSIFIER_CONFIG = {"in_channels": 1, "heads": {"digit": 10}, "image_size": 16, "width": 32,
                            "feature_dim": 128}
CLASSIFIER_STEPS = {"full": 600, "smoke": 5}


def train_digits_classifier(profile: str | None, progress: bool):
    """The digits' train split, shifted by up to 2 pixels; metric: accuracy on the test split."""
    steps = CLASSIFIER_STEPS["smoke" if profile == "smoke" else "full"]
    x_train, y_train = data.digits(16, split="train")  # (1437, 1, 16, 16), (1437,)
    x_test, y_test = data.digits(16, split="test")  # (360, 1, 16, 16), (360,)
    torch.manual_seed(0)
    net = classifier.Classifier(**DIGITS_CLASSIFIER_CONFIG)
    done = _fit_classifier(net, x_train, {"digit": y_train}, lambda x, g: _shifted(x, g, 2), steps, progress)
    net.eval()
    return net, {"test_accuracy": round(metrics.agreement(net, x_test, y_test), 6)}, done


DIGITS_CLASSIFIER = pretrained.register(pretrained.Recipe(
    name="digits-classifier",
    description="CNN that names the digit in a 16x16 image; its 128-d features are lesson 08's FID space",
    build=classifier.Classifier,
    config=DIGITS_CLASSIFIER_CONFIG,
    train=train_digits_classifier,
    recipe=("Classifier(in_channels=1, heads={'digit': 10}, image_size=16) on data.digits(16, split='train') "
            "(1437 images) shifted by up to 2 pixels; cross-entropy, train.fit for 600 AdamW steps, batch 128, "
            "lr 2e-3, grad clip 1.0, seed 0, on the CPU. Metric: accuracy on the test split (360 images)"),
))


def shapes_labels(batch: data.ShapesBatch) -> dict:
    """{head: (N,) class indices} of one-object shapes images, for the shapes classifier's heads."""
    if batch.labels.shape[1] != 1:
        raise ValueError(f"shapes_labels reads one-object images, got labels for {batch.labels.shape[1]} objects")
    columns = dict(zip(data.LABEL_COLUMNS, batch.labels[:, 0].unbind(1)))
    return {**columns, "background": batch.backgrounds}


SHAPES_CLASSIFIER_CONFIG = {"in_channels": 3, "heads": {"shape": len(data.ALL_SHAPES), "colour": len(data.COLOURS),
                                                        "size": len(data.SIZES), "position": len(data.POSITIONS),
                                                        "background": len(data.BACKGROUNDS)},
                            "image_size": 32, "width": 16, "feature_dim": 128}
SHAPES_CLASSIFIER_DATA = {"full": 8_000, "smoke": 256}


def _sometimes_16(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half the images averaged down to 16x16 and back up (bilinear): a 16x16 model's samples read at 32."""
    small = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), size=x.shape[-2:],
                                            mode="bilinear", align_corners=False)
    pick = torch.rand(x.shape[0], 1, 1, 1, generator=generator) < 0.5
    return torch.where(pick, small, x)


def train_shapes_classifier(profile: str | None, progress: bool):
    """One-object shapes (stars included) at 32x32, half seen at 16x16; metrics per head on new images."""
    size = "smoke" if profile == "smoke" else "full"
    batch = data.shapes(SHAPES_CLASSIFIER_DATA[size], size=32, shape_set=data.ALL_SHAPES, seed=0)
    torch.manual_seed(0)
    net = classifier.Classifier(**SHAPES_CLASSIFIER_CONFIG)
    done = _fit_classifier(net, batch.images, shapes_labels(batch), _sometimes_16, CLASSIFIER_STEPS[size], progress)
    net.eval()
    test = data.shapes(1_000, size=32, shape_set=data.ALL_SHAPES, seed=1)
    test_16 = data.shapes(1_000, size=16, shape_set=data.ALL_SHAPES, seed=1)
    scores = {f"test_accuracy_{head}": v for head, v in metrics.agreement(net, test.images, shapes_labels(test)).items()}
    scores |= {f"test_accuracy_{head}_16px": v
               for head, v in metrics.agreement(net, test_16.images, shapes_labels(test_16)).items()}
    return net, {k: round(v, 6) for k, v in scores.items()}, done


SHAPES_CLASSIFIER = pretrained.register(pretrained.Recipe(
    name="shapes-classifier",
    description="CNN that reads shape, colour, size, position and background of a one-object shapes image "
                "(32x32; 16x16 images are upsampled); its 128-d features are the shapes' FID space",
    build=classifier.Classifier,
    config=SHAPES_CLASSIFIER_CONFIG,
    train=train_shapes_classifier,
    recipe=("Classifier(in_channels=3, five heads, image_size=32, width=16) on data.shapes(8000, size=32, "
            "shape_set=ALL_SHAPES, seed=0), half of each batch averaged down to 16x16 and upsampled back; "
            "summed cross-entropy, train.fit for 600 AdamW steps, batch 128, lr 2e-3, grad clip 1.0, seed 0, "
            "on the CPU. Metrics: accuracy per head on 1000 new images (seed 1) at 32x32 and at 16x16"),
))


# ---------------------------------------------------------------------------- shapes-vae

def resumable(name: str, profile: str | None) -> dict:
    """``train.fit`` arguments that make a long recipe resumable: a training checkpoint
    ``NAME.run.safetensors`` in the cache every 250 steps, continued if it is there (an
    interrupted ``minildm train NAME`` picks up where it stopped). None for the smoke profile."""
    if profile == "smoke":
        return {}
    run = pretrained.cache_dir() / f"{name}.run.safetensors"
    run.parent.mkdir(parents=True, exist_ok=True)
    return {"checkpoint": run, "checkpoint_every": 250, "resume": True}


SHAPES_VAE_CONFIG = {"in_channels": 3, "latent_channels": 4, "factor": 4, "base": 32, "mults": [1, 2, 2],
                     "num_res_blocks": 1}
SHAPES_VAE_SIZES = {"full": {"steps": 4_000, "n_data": 20_000, "n_eval": 1_000},
                    "smoke": {"steps": 5, "n_data": 256, "n_eval": 32}}
SHAPES_VAE_TRAIN = {"batch_size": 32, "lr": 1e-3, "betas": (0.5, 0.9), "grad_clip": 1.0, "seed": 0}
SHAPES_VAE_LOSS = {"reg_weight": 1e-6, "perceptual_weight": 1.0}


def shapes_vae_data(n: int, seed: int) -> data.ShapesBatch:
    """What shapes-vae sees: 32x32 images with one or two objects of any shape, stars included
    (the autoencoder compresses pictures; the LoRA lesson's new concept must survive it)."""
    return data.shapes(n, size=32, n_objects=(1, 2), shape_set=data.ALL_SHAPES, seed=seed)


@torch.no_grad()
def reconstruct(autoencoder: autoencoders.Autoencoder, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """D(latents(x)) clamped to [-1, 1], ``batch_size`` images at a time, on the model's device; returns CPU images."""
    device = next(autoencoder.parameters()).device
    return torch.cat([autoencoder.decode(autoencoder.latents(x.to(device))).clamp(-1, 1).cpu()
                      for x in images.split(batch_size)])


def evaluate_shapes_vae(model: autoencoders.Autoencoder, profile: str | None) -> dict:
    """On ``n_eval`` new images (seed 1): mean PSNR of the reconstructions (from the posterior
    mean), and the judge's rate of everything-right on the reconstructions and on the originals."""
    sizes = SHAPES_VAE_SIZES["smoke" if profile == "smoke" else "full"]
    held_out = shapes_vae_data(sizes["n_eval"], seed=1)
    x_hat = reconstruct(model, held_out.images)
    return {"psnr_db": round(float(perceptual.psnr(held_out.images, x_hat).mean()), 3),
            "judge_all_reconstructions": round(judge.score(x_hat, held_out.captions).rates["all"], 6),
            "judge_all_originals": round(judge.score(held_out.images, held_out.captions).rates["all"], 6),
            "scale_factor": round(float(model.scale_factor), 6)}


def train_shapes_vae(profile: str | None, progress: bool):
    """L1 + perceptual (shapes-classifier features) + 1e-6 KL; then the latent scale factor,
    1 / std of the training latents, is measured and stored in the model's ``scale_factor``."""
    sizes = SHAPES_VAE_SIZES["smoke" if profile == "smoke" else "full"]
    images = shapes_vae_data(sizes["n_data"], seed=0).images  # (N, 3, 32, 32)
    torch.manual_seed(SHAPES_VAE_TRAIN["seed"])  # the initial weights
    vae = autoencoders.AutoencoderKL(**SHAPES_VAE_CONFIG)
    features = pretrained.load("shapes-classifier", device="cpu", progress=False)
    trainer = perceptual.AutoencoderTraining(vae, perceptual=features, **SHAPES_VAE_LOSS)
    result = train.fit(trainer, lambda net, x, g: net.loss(x, g), images, steps=sizes["steps"], device="cpu",
                       progress=progress, **resumable("shapes-vae", profile), **SHAPES_VAE_TRAIN)
    vae.eval()
    vae.scale_factor.fill_(autoencoders.latent_scale_factor(vae, images[:5_000]))
    scores = evaluate_shapes_vae(vae, profile)
    scores["loss_last_500"] = round(sum(result.losses[-500:]) / len(result.losses[-500:]), 3)
    return vae, scores, result.step


SHAPES_VAE = pretrained.register(pretrained.Recipe(
    name="shapes-vae",
    description="KL-regularised autoencoder (f = 4): 32x32 shapes <-> 8x8x4 latents; stage 1 of the shapes LDM",
    build=autoencoders.AutoencoderKL,
    config=SHAPES_VAE_CONFIG,
    train=train_shapes_vae,
    recipe=("AutoencoderKL(latent_channels=4, factor=4, base=32, mults=(1, 2, 2), 1 res block per level) on "
            "data.shapes(20000, size=32, n_objects=(1, 2), shape_set=ALL_SHAPES, seed=0); loss per image: "
            "sum over pixels of |x - x_hat| + 1.0 * P(x, x_hat) (unit-normalised shapes-classifier feature "
            "maps, LPIPS-style) + 1e-6 KL, no adversarial term; train.fit for 4000 AdamW steps, batch 32, lr "
            "1e-3, betas (0.5, 0.9), grad clip 1.0, seed 0, on the CPU. scale_factor = 1 / std of the "
            "posterior means of the first 5000 training images. Metrics on 1000 new images (seed 1): mean "
            "PSNR of the reconstructions (posterior mean decoded), and the judge's everything-right rate on "
            "reconstructions and originals"),
    evaluate=evaluate_shapes_vae,
))


# ---------------------------------------------------------------------------- shapes-clip

SHAPES_CLIP = pretrained.register(pretrained.Recipe(
    name="shapes-clip",
    description="mini-CLIP (transformers CLIP text + vision towers at toy size) trained contrastively on shapes "
                "and their captions; its per-token text features condition shapes-ldm",
    build=text.MiniCLIP,
    config=text.SHAPES_CLIP_CONFIG,
    train=text.train_shapes_clip,
    recipe=text.SHAPES_CLIP_RECIPE,
    evaluate=text.evaluate_shapes_clip,
))


# ---------------------------------------------------------------------------- shapes-ldm

def ldm_denoiser(*, size: int, schedule: str, T: int, caption_dropout: float, vae: str, text_encoder: str,
                 **unet_config) -> unet.UNet:
    """The eps-model of shapes-ldm: ``UNet(**unet_config)`` with ``context_dim`` = the text width.

    ``size`` (of the images), ``schedule``, ``T``, ``caption_dropout`` and the names of the
    frozen ``vae`` and ``text_encoder`` build nothing; they record how the U-Net was trained.
    """
    if schedule not in schedules.SCHEDULES:
        raise ValueError(f"schedule must be one of {list(schedules.SCHEDULES)}, got {schedule!r}")
    return unet.UNet(**unet_config)


SHAPES_LDM_CONFIG = {"size": 32, "schedule": "cosine", "T": 1000, "caption_dropout": 0.1, "vae": "shapes-vae",
                     "text_encoder": "shapes-clip", "in_channels": 4, "base": 32, "mults": [1, 2, 2],
                     "attn_levels": [1, 2], "num_res_blocks": 1, "context_dim": text.SHAPES_CLIP_CONFIG["text_width"]}
SHAPES_LDM_SIZES = {
    "full": {"steps": 8_000, "n_data": 20_000, "sample_steps": 50, "guidance_scales": [1.0, 3.0, 5.0]},
    "smoke": {"steps": 3, "n_data": 128, "sample_steps": 3, "guidance_scales": [1.0, 3.0]},
}
SHAPES_LDM_TRAIN = {"batch_size": 64, "lr": 5e-4, "ema_decay": 0.999, "grad_clip": 1.0, "seed": 0}


def shapes_ldm_parts(device=None, unet_model: unet.UNet | None = None):
    """(unet, vae, clip, schedule) of the shapes LDM, the frozen parts loaded from their shipped
    checkpoints (the U-Net too, unless ``unet_model`` is given), all in eval mode on ``device``.
    Nothing is trained on the fly: a missing file is an error that says how to make it."""
    config = SHAPES_LDM_CONFIG
    vae = pretrained.load(config["vae"], device=device, progress=False, train_if_missing=False)
    clip = pretrained.load(config["text_encoder"], device=device, progress=False, train_if_missing=False)
    net = (pretrained.load("shapes-ldm", device=device, progress=False, train_if_missing=False)
           if unet_model is None else unet_model.to(device))
    return net.eval(), vae.eval().requires_grad_(False), clip.eval().requires_grad_(False), noise_schedule_of(config)


def one_object_prompts() -> list[str]:
    """Every one-object caption of the grammar (3 shapes x 5 colours x 2 sizes x 5 positions x
    2 backgrounds = 300), the held-out (colour, shape) pairs included."""
    return [f"a {size} {colour} {shape} in the {position} on {background}"
            for shape in data.SHAPES for colour in data.COLOURS for size in data.SIZES
            for position in data.POSITIONS for background in data.BACKGROUNDS]


def is_held_out(prompt: str) -> bool:
    """Does a one-object prompt ask for a (colour, shape) pair shapes-ldm never saw?"""
    obj = data.parse_caption(prompt)["objects"][0]
    return (obj["colour"], obj["shape"]) in data.HELD_OUT


def evaluate_shapes_ldm(model: unet.UNet, profile: str | None) -> dict:
    """Per guidance scale, the judge's rates (colour, shape, size, position, background, all) on one
    sample of each one-object prompt (300; the smoke profile takes 6), and the rate of
    everything-right on the held-out pairs' prompts alone."""
    sizes = SHAPES_LDM_SIZES["smoke" if profile == "smoke" else "full"]
    net, vae, clip, schedule = shapes_ldm_parts("cpu", unet_model=model)
    prompts = one_object_prompts()
    if profile == "smoke":
        prompts = prompts[::50]
    held_out = torch.tensor([is_held_out(p) for p in prompts])
    scores = {}
    for scale in sizes["guidance_scales"]:
        images = torch.cat([ldm.sample(net, vae, clip, schedule, chunk, steps=sizes["sample_steps"],
                                       guidance_scale=scale, seed=k)
                            for k, chunk in enumerate(_chunks(prompts, 100))])
        result = judge.score(images, prompts)
        scores |= {f"judge_{key}_guidance_{scale:g}": v for key, v in result.rates.items()}
        everything = torch.tensor([all(d["correct"].values()) for d in result.details])
        if held_out.any():
            scores[f"judge_all_held_out_guidance_{scale:g}"] = float(everything[held_out].double().mean())
    return {k: round(v, 6) for k, v in scores.items()}


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def train_shapes_ldm(profile: str | None, progress: bool):
    """L_simple on shapes-vae's scaled latents of one-object shapes (held-out pairs excluded),
    conditioned on shapes-clip's text features; returns the EMA U-Net."""
    sizes = SHAPES_LDM_SIZES["smoke" if profile == "smoke" else "full"]
    config = SHAPES_LDM_CONFIG
    batch = data.shapes(sizes["n_data"], size=config["size"], n_objects=1, exclude=data.HELD_OUT, seed=0)
    torch.manual_seed(SHAPES_LDM_TRAIN["seed"])  # the initial weights
    model = ldm_denoiser(**config)
    _, vae, clip, schedule = shapes_ldm_parts("cpu", unet_model=model)
    z0 = torch.cat([ldm.encode(vae, x) for x in batch.images.split(500)])  # (N, 4, 8, 8), unit variance
    input_ids, attention_mask = text.encode(batch.captions, clip.max_length)  # (N, L) each
    empty = ldm.text_context(clip, [ldm.EMPTY_PROMPT])  # (1, L, D)

    def loss_fn(net, batch, generator):
        z0, ids, mask = batch
        with torch.no_grad():
            context = clip.text_features(ids, mask)  # (B, L, D), frozen
        return ldm.loss(net, z0, context, empty, schedule, caption_dropout=config["caption_dropout"],
                        generator=generator)

    result = train.fit(model, loss_fn, (z0, input_ids, attention_mask), steps=sizes["steps"], device="cpu",
                       progress=progress, **resumable("shapes-ldm", profile), **SHAPES_LDM_TRAIN)
    return result.ema, final_metrics(evaluate_shapes_ldm, result.ema, result, profile), result.step


SHAPES_LDM = pretrained.register(pretrained.Recipe(
    name="shapes-ldm",
    description="text-to-image latent diffusion on 32x32 shapes: a UNet with spatial transformers on shapes-vae's "
                "8x8x4 latents, conditioned on shapes-clip's text features (10% caption dropout for CFG)",
    build=ldm_denoiser,
    config=SHAPES_LDM_CONFIG,
    train=train_shapes_ldm,
    recipe=("Rombach et al. (2022) on data.shapes(20000, size=32, n_objects=1, exclude=HELD_OUT, seed=0): latents "
            "z0 = scale_factor * E(x) from shapes-vae (posterior mean), text features from shapes-clip (last hidden "
            "state, frozen), caption -> empty prompt with probability 0.1; UNet(in_channels=4, base=32, "
            "mults=(1, 2, 2), spatial transformers at 4x4 and 2x2 and in the middle, 1 res block per level, "
            "context_dim=64), L_simple with eps-prediction, cosine betas, T = 1000; train.fit for 8000 AdamW "
            "steps, batch 64, lr 5e-4, grad clip 1.0, EMA 0.999 (shipped), seed 0, on the CPU. Metrics: the "
            "shapes judge on one DDIM-50 sample of each of the 300 one-object prompts at guidance scales 1, 3, "
            "5, and everything-right on the 40 prompts of the held-out (colour, shape) pairs"),
    evaluate=evaluate_shapes_ldm,
))


# ---------------------------------------------------------------------------- shapes-controlnet-edges

def controlnet_model(*, base_model: str, condition: str, caption_dropout: float, moved_fraction: float,
                     **controlnet_config) -> controlnet.ControlNet:
    """A ControlNet for shapes-ldm: ``ControlNet(**controlnet_config)`` (its ``unet_config``, condition
    channels, factor and hint width). ``base_model`` (the locked U-Net's name), ``condition`` (what
    the condition image is), ``caption_dropout`` and ``moved_fraction`` build nothing: they record
    what the ControlNet was trained on and with. The file holds the ControlNet's weights alone."""
    if base_model not in pretrained.REGISTRY:
        raise ValueError(f"base_model must be a registered model, got {base_model!r}")
    return controlnet.ControlNet(**controlnet_config)


def move_objects(batch: data.ShapesBatch, seed: int, fraction: float = 0.5) -> data.ShapesBatch:
    """The batch with ``fraction`` of its images' objects moved anywhere they fit (seeded).

    The shapes data set puts an object only at one of 5 anchors (with 3% jitter), and shapes-ldm's
    prompts can name only those: a condition whose object sits elsewhere asks for what no prompt
    can. Each picked image is translated by a uniform (dy, dx) that keeps every object at least a
    pixel inside the canvas; the background is flat, so shifting the canvas (``torch.roll``) moves
    the objects exactly. Images, masks, edges, low-res copies and centres move together; captions
    keep their (now possibly wrong) position word, which the condition overrides.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    images, masks, edges, centres = batch.images.clone(), batch.masks.clone(), batch.edges.clone(), batch.centres.clone()
    H, W = masks.shape[-2:]
    picked = (torch.rand(len(batch), generator=g) < fraction).nonzero().flatten().tolist()
    for i in picked:
        rows = masks[i, 0].any(1).nonzero().flatten()
        cols = masks[i, 0].any(0).nonzero().flatten()
        # room to move, keeping a pixel of background (the anti-aliased rim) inside the canvas
        up, down = max(int(rows[0]) - 1, 0), max(H - 2 - int(rows[-1]), 0)
        left, right = max(int(cols[0]) - 1, 0), max(W - 2 - int(cols[-1]), 0)
        dy = int(torch.randint(-up, down + 1, (), generator=g))
        dx = int(torch.randint(-left, right + 1, (), generator=g))
        for t in (images, masks, edges):
            t[i] = t[i].roll((dy, dx), dims=(-2, -1))
        centres[i] += torch.tensor([dx, dy], dtype=centres.dtype)
    return data.ShapesBatch(**{**vars(batch), "images": images, "masks": masks, "edges": edges, "centres": centres,
                               "low_res": torch.nn.functional.avg_pool2d(images, data.SUPERSAMPLE)})


def controlnet_conditions(n: int, seed: int, fraction: float = 0.5) -> tuple[data.ShapesBatch, torch.Tensor]:
    """What shapes-controlnet-edges learns from and is scored on: one-object shapes (the held-out
    (colour, shape) pairs excluded, as for shapes-ldm), ``fraction`` of them moved off the anchors.
    Returns (batch, moved): moved (n,) bool, True where the object left its anchor."""
    anchored = data.shapes(n, size=32, n_objects=1, exclude=data.HELD_OUT, seed=seed)
    batch = move_objects(anchored, seed, fraction)
    return batch, (batch.centres != anchored.centres).any(-1).any(-1)


def recoloured_prompts(batch: data.ShapesBatch, seed: int) -> tuple[list[str], list[bool]]:
    """Each image's caption, with the colour swapped for another at random in every second one:
    (prompts, swapped). A swapped prompt's colour can only come from the prompt, not the condition."""
    g = torch.Generator().manual_seed(seed)
    colours = list(data.COLOURS)
    prompts, swapped = [], []
    for i, caption in enumerate(batch.captions):
        colour = batch.attributes[i]["objects"][0]["colour"]
        if i % 2:
            others = [c for c in colours if c != colour]
            caption = caption.replace(f" {colour} ", f" {others[int(torch.randint(len(others), (), generator=g))]} ", 1)
        prompts.append(caption)
        swapped.append(bool(i % 2))
    return prompts, swapped


def mask_iou(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image, |A & B| / |A | B| for A = the pixels of every object the judge reads in ``images``
    (N, 3, S, S) and B = ``masks`` (N, 1, S, S) > 0; 0 where nothing is read and B is not empty."""
    ious = []
    for scene, mask in zip(judge.read(images), masks[:, 0] > 0):
        seen = torch.zeros_like(mask)
        for obj in scene["objects"]:
            seen |= obj["mask"]
        union = (seen | mask).sum()
        ious.append(float((seen & mask).sum() / union) if union else 1.0)
    return torch.tensor(ious)


def prompt_colour_rate(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Per image, 1.0 if the judge reads at least one object and every object has the prompt's colour."""
    wanted = [data.parse_caption(p)["objects"][0]["colour"] for p in prompts]
    return torch.tensor([float(bool(scene["objects"]) and all(o["colour"] == c for o in scene["objects"]))
                         for scene, c in zip(judge.read(images), wanted)])


SHAPES_CONTROLNET_CONFIG = {
    "base_model": "shapes-ldm", "condition": "edges", "caption_dropout": 0.5, "moved_fraction": 0.5,
    # unet_config_of(shapes-ldm's U-Net), written out so the recipe needs no model to describe itself
    "unet_config": {"in_channels": 4, "base": 32, "mults": [1, 2, 2], "attn_levels": [1, 2], "num_res_blocks": 1,
                    "num_classes": None, "context_dim": text.SHAPES_CLIP_CONFIG["text_width"], "dropout": 0.0,
                    "heads": 4, "groups": 8},
    "condition_channels": 1, "factor": 4, "hint_width": 16}
SHAPES_CONTROLNET_SIZES = {
    "full": {"steps": 2_500, "n_data": 20_000, "n_eval": 128, "sample_steps": 50, "scales": [0.5, 1.0]},
    "smoke": {"steps": 3, "n_data": 128, "n_eval": 4, "sample_steps": 3, "scales": [1.0]},
}
SHAPES_CONTROLNET_TRAIN = {"batch_size": 64, "lr": 3e-4, "grad_clip": 1.0, "seed": 0}
CONTROLNET_GUIDANCE = 3.0  # classifier-free guidance scale of every sample in the evaluation


def evaluate_shapes_controlnet_edges(model: controlnet.ControlNet, profile: str | None) -> dict:
    """On ``n_eval`` new conditions (seed 1, half of them moved off the anchors; every second prompt's
    colour swapped), DDIM with guidance 3: the mean IoU between the judge's object masks and the
    condition's mask, with control (per scale; per anchored / moved half at scale 1), without it
    (shapes-ldm alone: the "before"), in guess mode (the empty prompt) and from scribbles of the
    same masks; the rate of samples in the prompt's colour (all, and the swapped half); and whether
    control scale 0 gives exactly the base model's images (1.0 = torch.equal)."""
    sizes = SHAPES_CONTROLNET_SIZES["smoke" if profile == "smoke" else "full"]
    base, vae, clip, schedule = shapes_ldm_parts("cpu")
    model = model.to("cpu").eval()
    batch, moved = controlnet_conditions(sizes["n_eval"], seed=1)
    prompts, swapped = recoloured_prompts(batch, seed=1)
    swapped = torch.tensor(swapped)

    def samples(condition=None, scale=1.0, guess_mode=False, asked=prompts):
        control = {} if condition is None else {"control": model, "condition": condition, "control_scale": scale,
                                                "guess_mode": guess_mode}
        return ldm.sample(base, vae, clip, schedule, asked, steps=sizes["sample_steps"],
                          guidance_scale=CONTROLNET_GUIDANCE, seed=1, **control)

    before = samples()
    scores = {"iou_without_control": float(mask_iou(before, batch.masks).mean()),
              "iou_without_control_moved": float(mask_iou(before[moved], batch.masks[moved]).mean()),
              "scale_0_equals_base": float(torch.equal(samples(batch.edges, 0.0), before))}
    for scale in sizes["scales"]:
        steered = samples(batch.edges, scale)
        iou = mask_iou(steered, batch.masks)
        scores[f"iou_scale_{scale:g}"] = float(iou.mean())
        if scale == 1.0:
            colour = prompt_colour_rate(steered, prompts)
            scores |= {"iou_scale_1_anchored": float(iou[~moved].mean()), "iou_scale_1_moved": float(iou[moved].mean()),
                       "colour_scale_1": float(colour.mean()), "colour_scale_1_swapped": float(colour[swapped].mean())}
    guessed = samples(batch.edges, guess_mode=True, asked=[ldm.EMPTY_PROMPT] * len(batch))
    scores["iou_guess_mode_empty_prompt"] = float(mask_iou(guessed, batch.masks).mean())
    sketched = samples(data.scribble(batch.masks, seed=1))
    scores["iou_scribble"] = float(mask_iou(sketched, batch.masks).mean())
    scores["colour_scribble"] = float(prompt_colour_rate(sketched, prompts).mean())
    return {k: round(v, 6) for k, v in scores.items()}


def train_shapes_controlnet_edges(profile: str | None, progress: bool):
    """Zhang et al. (2023) on shapes-ldm: lock the U-Net, copy its encoder into a ControlNet fed with
    edge maps, train the copy (and its zero convolutions) with L_simple, captions dropped half the time."""
    sizes = SHAPES_CONTROLNET_SIZES["smoke" if profile == "smoke" else "full"]
    config = SHAPES_CONTROLNET_CONFIG
    base, vae, clip, schedule = shapes_ldm_parts("cpu")
    base.requires_grad_(False)  # Theta, locked
    batch, _ = controlnet_conditions(sizes["n_data"], seed=0, fraction=config["moved_fraction"])
    z0 = torch.cat([ldm.encode(vae, x) for x in batch.images.split(500)])  # (N, 4, 8, 8)
    input_ids, attention_mask = text.encode(batch.captions, clip.max_length)  # (N, L) each
    empty = ldm.text_context(clip, [ldm.EMPTY_PROMPT])  # (1, L, D)
    torch.manual_seed(SHAPES_CONTROLNET_TRAIN["seed"])  # the hint encoder's first layers
    model = controlnet.ControlNet.from_unet(base, config["condition_channels"], config["factor"], config["hint_width"])

    def loss_fn(net, batch, generator):
        z0, ids, mask, edges = batch
        with torch.no_grad():
            context = clip.text_features(ids, mask)  # (B, L, D), frozen
        return ldm.loss(controlnet.ControlledUNet(base, net), z0, context, empty, schedule,
                        caption_dropout=config["caption_dropout"], generator=generator, condition=edges)

    result = train.fit(model, loss_fn, (z0, input_ids, attention_mask, batch.edges), steps=sizes["steps"],
                       device="cpu", progress=progress, **resumable("shapes-controlnet-edges", profile),
                       **SHAPES_CONTROLNET_TRAIN)
    model.eval()
    return model, final_metrics(evaluate_shapes_controlnet_edges, model, result, profile), result.step


SHAPES_CONTROLNET_EDGES = pretrained.register(pretrained.Recipe(
    name="shapes-controlnet-edges",
    description="ControlNet on shapes-ldm (locked): its encoder copied, fed with 32x32 edge maps through a hint "
                "encoder (f = 4), zero convolutions to the U-Net's skips and middle block; the weights of the "
                "ControlNet alone (the base is shapes-ldm)",
    build=controlnet_model,
    config=SHAPES_CONTROLNET_CONFIG,
    train=train_shapes_controlnet_edges,
    recipe=("Zhang, Rao & Agrawala (2023) on the shipped shapes-ldm (locked): ControlNet.from_unet(U-Net, "
            "condition_channels=1, factor=4, hint_width=16), edge maps (ShapesBatch.edges, {-1, 1}) of "
            "controlnet_conditions(20000, seed=0): data.shapes(n_objects=1, exclude=HELD_OUT), half of the "
            "images' objects moved anywhere they fit (move_objects), captions kept; caption -> empty prompt "
            "with probability 0.5 (the paper's choice); L_simple with eps-prediction in shapes-vae's latents, "
            "shapes-ldm's cosine schedule; train.fit for 2500 AdamW steps, batch 64, lr 3e-4, grad clip 1.0, "
            "no EMA, seed 0, on the CPU. Metrics on 128 new conditions (seed 1, half moved, every second "
            "prompt's colour swapped), DDIM-50 at guidance 3: mean IoU of the judge's object masks with the "
            "condition's mask with control at scales 0.5 and 1 (anchored / moved halves at 1), without control "
            "(shapes-ldm alone), in guess mode with the empty prompt, and from scribbles; the prompt's colour "
            "rate; scale 0 equal to shapes-ldm's images (1 = exactly)"),
    evaluate=evaluate_shapes_controlnet_edges,
))


# ---------------------------------------------------------------------------- shapes-star-lora

# where the adapter goes: the cross-attention's keys and values, the only projections that read the text, and
# the convolutions of the 8x8 level, where the U-Net draws outlines (it has no attention there)
STAR_LORA_TARGETS = ["attn2.to_k", "attn2.to_v", "down.0.0.conv1", "down.0.0.conv2", "up.0.0.conv1", "up.0.0.conv2",
                     "conv_out"]
STAR_LORA_CONFIG = {"base": "shapes-ldm", "r": 3, "alpha": 3.0, "targets": STAR_LORA_TARGETS}
STAR_LORA_SIZES = {"full": {"steps": 3_000, "n_star": 1_000, "n_prior": 1_000, "sample_steps": 50, "every": 1},
                   "smoke": {"steps": 3, "n_star": 64, "n_prior": 64, "sample_steps": 3, "every": 25}}
STAR_LORA_TRAIN = {"batch_size": 64, "lr": 1e-2, "ema_decay": 0.995, "grad_clip": 1.0, "seed": 0}
STAR_GUIDANCE = 3.0  # shapes-ldm's smallest guidance scale with every old prompt right (its manifest)


def star_lora_unet(*, base: str, r: int, alpha: float, targets: list[str]) -> unet.UNet:
    """The shipped U-Net ``base`` (shapes-ldm, frozen) with LoRA of rank ``r`` and scale alpha / r on ``targets``."""
    net = pretrained.load(base, device="cpu", progress=False, train_if_missing=False)
    lora.inject(net, targets=targets, r=r, alpha=alpha)
    return net


def star_prompts() -> list[str]:
    """Every one-object caption of a star (5 colours x 2 sizes x 5 positions x 2 backgrounds = 100)."""
    return [f"a {size} {colour} star in the {position} on {background}"
            for colour in data.COLOURS for size in data.SIZES for position in data.POSITIONS
            for background in data.BACKGROUNDS]


def star_lora_data(n_star: int, n_prior: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """The adapter's training set: ``n_star`` one-object star images and, for prior preservation, ``n_prior``
    images of the old shapes (held-out pairs excluded, as shapes-ldm saw them). (images (N, 3, 32, 32), captions)."""
    stars = data.shapes(n_star, size=32, n_objects=1, shape_set=["star"], seed=seed)
    if n_prior == 0:
        return stars.images, list(stars.captions)
    prior = data.shapes(n_prior, size=32, n_objects=1, exclude=data.HELD_OUT, seed=seed + 1)
    return torch.cat([stars.images, prior.images]), list(stars.captions) + list(prior.captions)


def adherence(net: unet.UNet, prompts: list[str], *, steps: int, guidance_scale: float = STAR_GUIDANCE,
              parts=None) -> judge.Score:
    """The judge's score of one DDIM sample per prompt (seed k for the k-th hundred prompts)."""
    _, vae, clip, schedule = parts or shapes_ldm_parts("cpu", unet_model=net)
    images = torch.cat([ldm.sample(net, vae, clip, schedule, chunk, steps=steps, guidance_scale=guidance_scale,
                                   seed=k) for k, chunk in enumerate(_chunks(prompts, 100))])
    return judge.score(images, prompts)


def adapter_fraction(model: unet.UNet) -> float:
    """The LoRA tensors' numbers over the base U-Net's parameters (trainable or not: an EMA copy is frozen)."""
    adapter = sum(v.numel() for v in lora.lora_state_dict(model).values())
    return adapter / (sum(p.numel() for p in model.parameters()) - adapter)


def evaluate_shapes_star_lora(model: unet.UNet, profile: str | None) -> dict:
    """At guidance 3, one sample per prompt: on the 100 star prompts the rate the judge reads a star and
    the everything-right rate; on the 300 old one-object prompts the everything-right rate with the
    adapter and without it (LoRA scale 0: shapes-ldm itself), so forgetting is their difference."""
    sizes = STAR_LORA_SIZES["smoke" if profile == "smoke" else "full"]
    stars, old = star_prompts()[::sizes["every"]], one_object_prompts()[::sizes["every"]]
    star = adherence(model, stars, steps=sizes["sample_steps"])
    adapted = adherence(model, old, steps=sizes["sample_steps"]).rates["all"]
    lora.set_scale(model, 0.0)
    try:
        base = adherence(model, old, steps=sizes["sample_steps"]).rates["all"]
    finally:
        lora.set_scale(model, 1.0)
    scores = {"judge_star_shape": star.rates["shape"], "judge_star_all": star.rates["all"],
              "judge_old_all": adapted, "judge_old_all_base": base, "forgetting_points": 100 * (base - adapted),
              "lora_fraction_of_unet": adapter_fraction(model)}
    return {k: round(v, 6) for k, v in scores.items()}


def fit_star_lora(net: unet.UNet, images: torch.Tensor, captions: list[str], steps: int, *, progress: bool = False,
                  **settings) -> train.TrainResult:
    """L_simple on shapes-vae's latents of ``images`` with shapes-clip's features of ``captions`` (caption dropout
    as shapes-ldm's), training whatever parameters of ``net`` require grad; ``train.fit`` with STAR_LORA_TRAIN
    (``settings`` override it)."""
    _, vae, clip, schedule = shapes_ldm_parts("cpu", unet_model=net)
    z0 = torch.cat([ldm.encode(vae, x) for x in images.split(500)])  # (N, 4, 8, 8)
    context = torch.cat([ldm.text_context(clip, chunk) for chunk in _chunks(captions, 500)])  # (N, L, D), frozen
    empty = ldm.text_context(clip, [ldm.EMPTY_PROMPT])  # (1, L, D)

    def loss_fn(model, batch, generator):
        z0, context = batch
        return ldm.loss(model, z0, context, empty, schedule, caption_dropout=SHAPES_LDM_CONFIG["caption_dropout"],
                        generator=generator)

    result = train.fit(net, loss_fn, (z0, context), steps=steps, device="cpu", progress=progress,
                       **(STAR_LORA_TRAIN | settings))
    net.eval()
    return result


def train_shapes_star_lora(profile: str | None, progress: bool):
    """LoRA on shapes-ldm's U-Net, trained on stars mixed half and half with the old shapes; returns the EMA
    of the adapter's weights."""
    sizes = STAR_LORA_SIZES["smoke" if profile == "smoke" else "full"]
    torch.manual_seed(STAR_LORA_TRAIN["seed"])  # A's initial weights
    net = star_lora_unet(**STAR_LORA_CONFIG)
    images, captions = star_lora_data(sizes["n_star"], sizes["n_prior"])
    result = fit_star_lora(net, images, captions, sizes["steps"], progress=progress,
                           **resumable("shapes-star-lora", profile))
    scores = evaluate_shapes_star_lora(result.ema, profile)
    scores["loss_last_100"] = round(sum(result.losses[-100:]) / len(result.losses[-100:]), 6)
    return result.ema, scores, result.step


SHAPES_STAR_LORA = pretrained.register(pretrained.Recipe(
    name="shapes-star-lora",
    description="LoRA adapter (r = 3) that teaches shapes-ldm a shape it never saw, the star; the file holds the "
                "LoRA tensors alone (peft names), loading puts them on the shipped shapes-ldm",
    build=star_lora_unet,
    config=STAR_LORA_CONFIG,
    train=train_shapes_star_lora,
    recipe=("Hu et al. (2021) on the shipped shapes-ldm U-Net (frozen): LoRA r = 3, alpha = 3 (scale 1) on the "
            "cross-attention keys and values attn2.to_k / attn2.to_v of the 5 spatial transformers and on the "
            "8x8-level convolutions down.0.0.conv1/conv2, up.0.0.conv1/conv2 and conv_out (peft's Conv2d LoRA): "
            "10,284 trainable numbers, 0.83% of the U-Net's 1,235,940; data: 1000 one-object stars "
            "(data.shapes(shape_set=['star'], seed=0)) plus, for prior preservation, 1000 images of the old shapes "
            "(exclude=HELD_OUT, seed=1), with their captions; L_simple in shapes-vae's latents with shapes-clip's "
            "frozen features, caption -> empty prompt with probability 0.1; train.fit for 3000 AdamW steps, batch "
            "64, lr 1e-2, grad clip 1.0, EMA 0.995 (shipped), seed 0, on the CPU. Metrics at guidance 3, DDIM 50, "
            "one sample per prompt: on the 100 star prompts the judge's star rate and everything-right rate; on "
            "the 300 old one-object prompts the everything-right rate with the adapter and at LoRA scale 0 "
            "(shapes-ldm itself), and the difference in points"),
    evaluate=evaluate_shapes_star_lora,
    saved=lora.lora_state_dict,
))
