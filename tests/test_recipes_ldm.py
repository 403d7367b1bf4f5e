"""shapes-ldm: the smoke run of its recipe, the shipped model's prompt adherence, and `minildm sample`."""

import numpy as np
import pytest
import torch
from PIL import Image

from minildm import cli, data, judge, ldm, recipes

def test_one_object_prompts_cover_the_grammar_and_the_held_out_pairs():
    prompts = recipes.one_object_prompts()
    assert len(prompts) == len(set(prompts)) == 3 * 5 * 2 * 5 * 2
    assert all(len(data.parse_caption(p)["objects"]) == 1 for p in prompts)
    assert sum(map(recipes.is_held_out, prompts)) == len(data.HELD_OUT) * 2 * 5 * 2


def test_the_smoke_run_returns_a_rebuildable_unet_and_its_metrics(repo_data):
    model, scores, steps = recipes.train_shapes_ldm("smoke", False)
    assert steps == recipes.SHAPES_LDM_SIZES["smoke"]["steps"]
    recipes.ldm_denoiser(**recipes.SHAPES_LDM_CONFIG).load_state_dict(model.state_dict())
    assert "judge_all_guidance_3" in scores and "loss_last_500" in scores


def test_the_shipped_ldm_follows_prompts_it_never_saw_as_well_as_the_others(repo_data):
    unet, vae, clip, schedule = recipes.shapes_ldm_parts("cpu")
    prompts = recipes.one_object_prompts()
    chosen = prompts[3::12] + [p for p in prompts if recipes.is_held_out(p)][::8]  # 25 seen + 5 held-out
    images = ldm.sample(unet, vae, clip, schedule, chosen, steps=20, guidance_scale=3.0, seed=5)
    rates = judge.score(images, chosen).rates
    assert min(rates["colour"], rates["shape"], rates["position"]) >= 0.9, rates
    held_out = [d for d in judge.score(images[-5:], chosen[-5:]).details]
    assert sum(all(d["correct"].values()) for d in held_out) >= 4


def test_minildm_sample_writes_the_samples_side_by_side_offline(repo_data, tmp_path, capsys):
    out = tmp_path / "samples.png"
    assert cli.main(["sample", "a large blue square in the center on black", "--out", str(out), "--n", "2",
                     "--steps", "10", "--scale", "2"]) == 0
    picture = np.asarray(Image.open(out))
    assert picture.shape == (64, 128, 3)
    assert "2 sample(s)" in capsys.readouterr().out
    scene = judge.read(image_to_tensor(picture[:, :64]))[0]
    assert scene["background"] == "black" and scene["objects"][0]["colour"] == "blue"


def image_to_tensor(pixels):
    """(H, W, 3) uint8 upscaled by 2 -> (1, 3, H/2, W/2) in [-1, 1]."""
    x = torch.from_numpy(pixels[::2, ::2].copy()).permute(2, 0, 1).float() / 127.5 - 1
    return x[None]


def test_minildm_sample_refuses_nonsense_counts(repo_data, tmp_path):
    with pytest.raises(SystemExit, match="must be positive"):
        cli.main(["sample", "a red circle", "--out", str(tmp_path / "x.png"), "--n", "0"])


def test_minildm_sample_leaves_autograd_on(repo_data, tmp_path):
    cli.main(["sample", "a red circle", "--out", str(tmp_path / "x.png"), "--steps", "2"])
    assert torch.is_grad_enabled()
