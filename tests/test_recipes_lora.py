"""shapes-star-lora: an adapter recipe on the shipped shapes-ldm, its file, its data and its budget."""

import pytest
import torch

from minildm import checkpoint, data, lora, pretrained, recipes


def test_star_prompts_are_every_one_object_star_caption():
    prompts = recipes.star_prompts()
    assert len(prompts) == len(set(prompts)) == 5 * 2 * 5 * 2
    objects = [data.parse_caption(p)["objects"] for p in prompts]
    assert all(len(o) == 1 and o[0]["shape"] == "star" for o in objects)


def test_the_training_set_is_stars_then_old_shapes_with_their_captions():
    images, captions = recipes.star_lora_data(20, 10, seed=3)
    assert images.shape == (30, 3, 32, 32) and len(captions) == 30
    shapes = [data.parse_caption(c)["objects"][0]["shape"] for c in captions]
    assert set(shapes[:20]) == {"star"} and "star" not in shapes[20:]
    pairs = {(data.parse_caption(c)["objects"][0]["colour"], s) for c, s in zip(captions[20:], shapes[20:])}
    assert not pairs & set(data.HELD_OUT)  # the prior is what shapes-ldm saw
    assert torch.equal(images[:20], data.shapes(20, size=32, n_objects=1, shape_set=["star"], seed=3).images)
    only_stars, star_captions = recipes.star_lora_data(5, 0)
    assert len(only_stars) == len(star_captions) == 5


def test_the_adapter_trains_at_most_one_percent_of_the_unet_and_starts_as_shapes_ldm(repo_data):
    torch.manual_seed(0)
    adapted = recipes.star_lora_unet(**recipes.STAR_LORA_CONFIG)
    base = pretrained.load("shapes-ldm", device="cpu", train_if_missing=False)
    trainable, total = lora.count_parameters(adapted)
    base_total = sum(p.numel() for p in base.parameters())
    assert total - trainable == base_total
    assert trainable / base_total <= 0.01, trainable / base_total
    # r (in k k + out) per wrapped convolution, r (in + out) per linear, counted from the base's own layers
    r = recipes.STAR_LORA_CONFIG["r"]
    expected = 0
    for name, module in base.named_modules():
        if any(name == t or name.endswith("." + t) for t in recipes.STAR_LORA_CONFIG["targets"]):
            weight = module.weight
            expected += r * (weight[0].numel() + weight.shape[0])
    assert trainable == expected
    # B = 0: the adapted U-Net predicts exactly what shapes-ldm predicts
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    context = torch.randn(2, 21, 64)
    with torch.no_grad():
        assert torch.equal(adapted(z, t, context=context), base(z, t, context=context))


def test_the_smoke_run_gives_a_file_of_lora_tensors_that_loads_onto_shapes_ldm(repo_data, tmp_path):
    recipe = pretrained.REGISTRY["shapes-star-lora"]
    model, scores, steps = recipe.train("smoke", False)
    assert steps == recipes.STAR_LORA_SIZES["smoke"]["steps"]
    assert {"judge_star_shape", "judge_star_all", "judge_old_all", "judge_old_all_base", "forgetting_points",
            "loss_last_100"} <= set(scores)
    assert scores["forgetting_points"] == pytest.approx(100 * (scores["judge_old_all_base"] - scores["judge_old_all"]),
                                                        abs=1e-4)
    path = tmp_path / "star.safetensors"
    pretrained._save_file(recipe, path, model, {"steps": steps, "metrics": scores}, half=True)
    tensors, meta = checkpoint.load(path)
    assert set(tensors) == set(lora.lora_state_dict(model))
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in tensors)
    assert meta["config"] == recipes.STAR_LORA_CONFIG
    loaded = pretrained._load_file(recipe, path)
    for key, value in lora.lora_state_dict(model).items():
        assert torch.equal(loaded.get_parameter(key).detach(), value.half().float())
    z, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 21, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(z, t, context=context), model(z, t, context=context), atol=1e-2)


@pytest.mark.skipif(not pretrained.shipped_path("shapes-star-lora").exists(), reason="adapter not shipped yet")
def test_the_shipped_adapter_draws_stars_and_keeps_the_old_shapes(repo_data):
    net = pretrained.load("shapes-star-lora", device="cpu", train_if_missing=False)
    _, vae, clip, schedule = recipes.shapes_ldm_parts("cpu", unet_model=net)
    stars = recipes.star_prompts()[::5]  # 20 of the 100
    old = recipes.one_object_prompts()[7::15]  # 20 of the 300
    star_score = recipes.adherence(net, stars, steps=20, parts=(net, vae, clip, schedule))
    old_score = recipes.adherence(net, old, steps=20, parts=(net, vae, clip, schedule))
    # shapes-ldm draws no star at all (circles, mostly); the shipped adapter: 68% of the 100 star prompts at
    # DDIM 50 (its manifest), 65% of these 20 at DDIM 20; and 98% of the old prompts everything-right
    assert star_score.rates["shape"] >= 0.5, star_score.rates
    assert old_score.rates["all"] >= 0.9, old_score.rates
