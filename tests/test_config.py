"""Profiles, devices, seeds and the environment report."""

import random

import numpy as np
import pytest
import torch

from minildm import config


def test_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    assert config.profile().name == "smoke"
    monkeypatch.setenv(config.PROFILE_ENV, "gpu")
    assert config.profile() is config.PROFILES["gpu"]


def test_explicit_name_beats_the_environment(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    assert config.profile("cpu").name == "cpu"


def test_default_profile_follows_the_device(monkeypatch):
    monkeypatch.delenv(config.PROFILE_ENV, raising=False)
    expected = "cpu" if config.device().type == "cpu" else "gpu"
    assert config.profile().name == expected


def test_profiles_grow_from_smoke_to_gpu():
    smoke, cpu, gpu = (config.PROFILES[n] for n in ("smoke", "cpu", "gpu"))
    for field in ("steps", "batch_size", "n_train", "n_samples", "sample_steps", "mc"):
        assert getattr(smoke, field) < getattr(cpu, field) <= getattr(gpu, field), field


def test_unknown_profile_names_the_choices(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown profile 'laptop'.*smoke"):
        config.profile("laptop")
    monkeypatch.setenv(config.PROFILE_ENV, "fast")
    with pytest.raises(ValueError, match=r"MINILDM_PROFILE"):
        config.profile()
    with pytest.raises(TypeError, match="profile name"):
        config.profile(3)


def test_seed_everything_makes_every_generator_repeat():
    def draw(gen):
        return random.random(), np.random.rand(), torch.rand(3), torch.rand(3, generator=gen)

    first = draw(config.seed_everything(7))
    second = draw(config.seed_everything(7))
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    assert not torch.equal(draw(config.seed_everything(8))[2], first[2])


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_seed_everything_rejects_bad_seeds(seed, error):
    with pytest.raises(error, match="seed"):
        config.seed_everything(seed)


def test_env_report_names_versions_device_and_profile(monkeypatch):
    monkeypatch.setenv(config.PROFILE_ENV, "smoke")
    report = config.env_report()
    assert report["torch"] == torch.__version__
    assert report["profile"] == "smoke"
    assert report["device"] == str(config.device())
    assert report["torch_threads"] >= 1
