"""shapes-controlnet-edges: its conditions (objects moved off the anchors), its scores, the smoke run, the shipped file."""

import json

import pytest
import torch
import torch.nn.functional as F

from minildm import controlnet, data, ldm, pretrained, recipes

NAME = "shapes-controlnet-edges"


def test_the_config_is_json_and_rebuilds_a_controlnet_for_the_shipped_ldms_unet():
    config = json.loads(json.dumps(recipes.SHAPES_CONTROLNET_CONFIG))
    assert config["base_model"] == "shapes-ldm" and config["caption_dropout"] == 0.5 and config["factor"] == 4
    # the written-out unet_config is what unet_config_of reads back from shapes-ldm's U-Net
    assert config["unet_config"] == controlnet.unet_config_of(recipes.ldm_denoiser(**recipes.SHAPES_LDM_CONFIG))
    net = recipes.controlnet_model(**config)
    assert isinstance(net, controlnet.ControlNet) and net.config["unet_config"] == config["unet_config"]
    with pytest.raises(ValueError, match="base_model must be a registered model"):
        recipes.controlnet_model(**(config | {"base_model": "no-such-model"}))


@pytest.fixture(scope="module")
def anchored():
    return data.shapes(64, size=32, n_objects=1, seed=5)


def test_moved_objects_are_the_same_pictures_translated_and_stay_inside_the_canvas(anchored):
    moved = recipes.move_objects(anchored, seed=2, fraction=1.0)
    shifted = 0
    for i in range(len(anchored)):
        # the shift read off the centres moves the image, mask and edges onto the moved ones exactly
        dx, dy = (moved.centres[i, 0] - anchored.centres[i, 0]).round().long().tolist()
        shifted += (dx, dy) != (0, 0)
        for name in ("images", "masks", "edges"):
            assert torch.equal(getattr(anchored, name)[i].roll((dy, dx), dims=(-2, -1)), getattr(moved, name)[i]), name
        # a pixel of background all around: no object touches (or wraps over) the border
        assert not moved.masks[i, 0, [0, -1], :].any() and not moved.masks[i, 0, :, [0, -1]].any()
    assert shifted >= 0.9 * len(anchored)
    # the edge map is still the outline of the mask (inside, with a 4-neighbour outside), the low-res copy
    # still the 4x4 average
    outside = 1 - moved.masks
    four_neighbour_out = (F.max_pool2d(outside, (3, 1), 1, (1, 0)) + F.max_pool2d(outside, (1, 3), 1, (0, 1))) > 0
    assert torch.equal(moved.edges > 0, (moved.masks > 0) & four_neighbour_out)
    torch.testing.assert_close(moved.low_res, F.avg_pool2d(moved.images, 4))
    assert moved.captions == anchored.captions


def test_moving_is_seeded_and_the_fraction_picks_how_many(anchored):
    assert torch.equal(recipes.move_objects(anchored, 3).images, recipes.move_objects(anchored, 3).images)
    assert torch.equal(recipes.move_objects(anchored, 3, fraction=0.0).images, anchored.images)
    batch, moved = recipes.controlnet_conditions(200, seed=4)
    assert 0.35 <= moved.double().mean() <= 0.65
    assert all((d["objects"][0]["colour"], d["objects"][0]["shape"]) not in data.HELD_OUT for d in batch.attributes)
    with pytest.raises(ValueError, match="fraction"):
        recipes.move_objects(anchored, 0, fraction=1.5)


def test_every_second_prompt_asks_for_another_colour_and_says_the_rest_the_same(anchored):
    prompts, swapped = recipes.recoloured_prompts(anchored, seed=0)
    assert swapped == [i % 2 == 1 for i in range(len(anchored))]
    for prompt, caption, s in zip(prompts, anchored.captions, swapped):
        asked, real = data.parse_caption(prompt), data.parse_caption(caption)
        assert (asked["objects"][0]["colour"] != real["objects"][0]["colour"]) == s
        assert {**asked["objects"][0], "colour": None} == {**real["objects"][0], "colour": None}
        assert asked["background"] == real["background"]


def test_iou_and_colour_rate_score_real_pictures_right_and_wrong_ones_low(anchored):
    iou = recipes.mask_iou(anchored.images, anchored.masks)
    assert iou.min() >= 0.85  # the judge reads a rendered object's pixels back
    # against the mask of another image (a different place or size), the overlap drops
    assert recipes.mask_iou(anchored.images, anchored.masks.roll(1, dims=0)).mean() <= 0.4
    blank = torch.ones(2, 3, 32, 32)  # white canvas: nothing to read
    assert recipes.mask_iou(blank, anchored.masks[:2]).tolist() == [0.0, 0.0]
    assert recipes.mask_iou(blank, torch.zeros(2, 1, 32, 32)).tolist() == [1.0, 1.0]
    prompts, swapped = recipes.recoloured_prompts(anchored, seed=0)
    rate = recipes.prompt_colour_rate(anchored.images, prompts)
    assert torch.equal(rate, (~torch.tensor(swapped)).float())


def test_the_smoke_run_trains_only_the_controlnet_and_scores_it(repo_data):
    locked = {k: v.clone() for k, v in recipes.shapes_ldm_parts("cpu")[0].state_dict().items()}
    model, scores, steps = recipes.train_shapes_controlnet_edges("smoke", False)
    assert steps == recipes.SHAPES_CONTROLNET_SIZES["smoke"]["steps"]
    recipes.controlnet_model(**recipes.SHAPES_CONTROLNET_CONFIG).load_state_dict(model.state_dict())
    assert all(torch.equal(v, locked[k]) for k, v in recipes.shapes_ldm_parts("cpu")[0].state_dict().items())
    # a few steps move the zero convolutions off zero
    assert any(conv.weight.abs().max() > 0 for conv in model.zero_convolutions())
    assert scores["scale_0_equals_base"] == 1.0
    assert {"iou_scale_1", "iou_without_control", "colour_scale_1", "iou_guess_mode_empty_prompt", "iou_scribble",
            "loss_last_500"} <= scores.keys()


def test_the_shipped_controlnet_puts_objects_where_the_edges_say_in_the_prompts_colour(repo_data):
    if not pretrained.shipped_path(NAME).exists():
        pytest.skip(f"{NAME} is not shipped")
    metrics = json.loads(pretrained.manifest_path().read_text())[NAME]["metrics"]
    assert metrics["iou_scale_1"] >= 0.8 and metrics["colour_scale_1"] >= 0.9 and metrics["scale_0_equals_base"] == 1
    # and here, on conditions of another seed: moved objects follow the edges, colours the prompt
    net = pretrained.load(NAME, device="cpu", train_if_missing=False)
    unet, vae, clip, schedule = recipes.shapes_ldm_parts("cpu")
    batch, moved = recipes.controlnet_conditions(24, seed=11)
    prompts, _ = recipes.recoloured_prompts(batch, seed=11)
    kwargs = {"steps": 20, "guidance_scale": recipes.CONTROLNET_GUIDANCE, "seed": 3}
    steered = ldm.sample(unet, vae, clip, schedule, prompts, control=net, condition=batch.edges, **kwargs)
    plain = ldm.sample(unet, vae, clip, schedule, prompts, **kwargs)
    iou, iou_plain = recipes.mask_iou(steered, batch.masks), recipes.mask_iou(plain, batch.masks)
    assert iou.mean() >= 0.75 and iou[moved].mean() >= iou_plain[moved].mean() + 0.3, (iou, iou_plain)
    assert recipes.prompt_colour_rate(steered, prompts).mean() >= 0.85
