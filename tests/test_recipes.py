"""The shipped models' recipes: each builds from its config, and the shipped toy2d-ddpm is a good model."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from minildm import checkpoint, data, metrics, pretrained, recipes, samplers

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("name", pretrained.names())
def test_every_recipe_builds_its_network_from_its_json_config(name):
    recipe = pretrained.REGISTRY[name]
    config = json.loads(json.dumps(recipe.config))  # the config travels inside the checkpoint as JSON
    assert config == recipe.config
    model = recipe.build(**config)
    assert isinstance(model, nn.Module) and sum(p.numel() for p in model.parameters()) > 0
    assert recipe.description and recipe.recipe


def test_toy2d_ddpm_is_the_linear_schedule_of_ho_et_al_with_1000_steps():
    s = recipes.noise_schedule("toy2d-ddpm")
    assert s.T == 1000
    assert torch.allclose(s.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), atol=1e-12)
    assert recipes.TOY2D_DDPM.config["dataset"] in data.TOY2D


def test_noise_schedule_and_the_builder_refuse_bad_names():
    with pytest.raises(ValueError, match="unknown pretrained model"):
        recipes.noise_schedule("no-such-model")
    config = dict(recipes.TOY2D_CONFIG)
    with pytest.raises(ValueError, match="dataset must be one of"):
        recipes.toy2d_denoiser(**{**config, "dataset": "spirals"})
    with pytest.raises(ValueError, match="schedule must be one of"):
        recipes.toy2d_denoiser(**{**config, "schedule": "quadratic"})


def test_the_smoke_run_of_the_toy2d_recipe_returns_a_rebuildable_model_and_its_metrics():
    model, scores, steps = recipes.train_toy2d_ddpm("smoke", False)
    assert steps == recipes.TOY2D_SIZES["smoke"]["steps"]
    recipes.toy2d_denoiser(**recipes.TOY2D_CONFIG).load_state_dict(model.state_dict())
    assert set(scores) == {"sliced_wasserstein", "mmd", "sliced_wasserstein_data_vs_data", "mmd_data_vs_data",
                           "loss_last_500"}
    assert all(isinstance(v, float) for v in scores.values())


def test_the_shipped_toy2d_ddpm_file_is_small_fp16_and_matches_its_manifest(repo_data):
    path = REPO_DATA / "checkpoints" / "toy2d-ddpm.safetensors"
    entry = json.loads((REPO_DATA / "checkpoints" / "manifest.json").read_text())["toy2d-ddpm"]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["bytes"] == path.stat().st_size < 1_000_000
    assert entry["config"] == recipes.TOY2D_CONFIG
    tensors, meta = checkpoint.load(path)
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    assert meta["config"] == recipes.TOY2D_CONFIG


def _distance_to_data(model) -> float:
    """SW_1 of 1000 DDPM samples (100 strided steps) to 1000 fresh moons points."""
    s = recipes.noise_schedule("toy2d-ddpm")
    with torch.no_grad():
        x = samplers.sample(model.eval(), s, (1000, 2), steps=100, generator=torch.Generator().manual_seed(0))
    return metrics.sliced_wasserstein(x, data.toy2d("moons", 1000, seed=7), generator=torch.Generator().manual_seed(1))


# an untrained network scores about 1e2 to 1e3 (its samples spread far past the data: it does not cancel the
# noise, so the 1 / sqrt(alpha_t) of every step adds up); two samples of real data score about 0.05
GOOD_ENOUGH = 0.15


def test_the_shipped_toy2d_ddpm_loads_with_its_sha_checked_and_samples_the_moons(repo_data):
    model = pretrained.load("toy2d-ddpm", device="cpu", train_if_missing=False, progress=False)
    assert _distance_to_data(model) < GOOD_ENOUGH


def test_an_untrained_toy2d_network_fails_the_same_threshold():
    torch.manual_seed(0)
    assert _distance_to_data(recipes.toy2d_denoiser(**recipes.TOY2D_CONFIG)) > 10 * GOOD_ENOUGH


def test_loading_refuses_a_shipped_file_whose_sha256_the_manifest_does_not_list(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "checkpoints"
    folder.mkdir(parents=True)
    shipped = REPO_DATA / "checkpoints" / "toy2d-ddpm.safetensors"
    (folder / shipped.name).write_bytes(shipped.read_bytes())
    (folder / "manifest.json").write_text(json.dumps({"toy2d-ddpm": {"sha256": "0" * 64}}))
    monkeypatch.setenv(pretrained.DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(checkpoint.CheckpointError, match="sha256"):
        pretrained.load("toy2d-ddpm", device="cpu", train_if_missing=False)


def test_long_recipes_resume_from_a_training_checkpoint_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    assert recipes.resumable("shapes-ldm", "smoke") == {}
    args = recipes.resumable("shapes-ldm", None)
    assert args == {"checkpoint": tmp_path / "cache" / "shapes-ldm.run.safetensors", "checkpoint_every": 250,
                    "resume": True}
    assert args["checkpoint"].parent.is_dir()
