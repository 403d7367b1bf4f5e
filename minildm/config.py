"""Profiles, devices and seeds: how big every lesson runs, and where.

A lesson never hard-codes a size. It asks ``profile()`` and scales its training runs,
datasets and sample counts by the answer, so the same notebook proves itself in seconds
in CI (``smoke``), teaches on a laptop in minutes (``cpu``) and trains good models on one
GPU (``gpu``).
"""

from __future__ import annotations

import os
import platform
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

PROFILE_ENV = "MINILDM_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Sizes a lesson scales by. Every field is a plain number a learner can read."""

    name: str
    steps: int  # optimizer steps for a lesson's main training run
    batch_size: int  # training batch size
    n_train: int  # examples drawn from a generated dataset for training
    n_samples: int  # samples generated for grids and metrics
    sample_steps: int  # sampler steps for quick pictures
    mc: int  # Monte Carlo draws in numerical checks
    image_size: int  # pixel-space training resolution in the image lessons
    width: int  # base channel width of lesson models

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    # CI: proves every cell runs; pictures come from shipped checkpoints.
    "smoke": Profile("smoke", steps=40, batch_size=64, n_train=512, n_samples=64,
                     sample_steps=20, mc=20_000, image_size=16, width=32),
    # a 2-core laptop: each notebook in minutes, recognisable results.
    "cpu": Profile("cpu", steps=3_000, batch_size=128, n_train=8_192, n_samples=512,
                   sample_steps=100, mc=200_000, image_size=32, width=64),
    # one GPU: each notebook under 10 minutes, good results.
    "gpu": Profile("gpu", steps=20_000, batch_size=256, n_train=50_000, n_samples=2_048,
                   sample_steps=250, mc=1_000_000, image_size=32, width=128),
}


def device() -> torch.device:
    """The best available device: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def profile(name: str | None = None) -> Profile:
    """The sizes to run at: ``name``, else ``$MINILDM_PROFILE``, else chosen by the device.

    Without an accelerator the default is ``cpu``; with CUDA or MPS it is ``gpu``.
    """
    if name is None:
        name = os.environ.get(PROFILE_ENV, "").strip() or None
        source = f"${PROFILE_ENV}"
    else:
        source = "name"
    if name is None:
        return PROFILES["cpu" if device().type == "cpu" else "gpu"]
    if not isinstance(name, str):
        raise TypeError(f"profile name must be a string, got {type(name).__name__}")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from {source}); choose from {sorted(PROFILES)}")
    return PROFILES[name]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same.

    Lessons pass the returned generator to anything random they call, so a cell gives the
    same result when it is run again.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def env_report() -> dict:
    """Versions, device, profile and threads: the first thing to paste into a bug report."""
    import matplotlib
    import minildm

    dev = device()
    report = {
        "minildm": minildm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "device": str(dev),
        "profile": profile().name,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    return report
