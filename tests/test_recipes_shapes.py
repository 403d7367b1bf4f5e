"""The shapes-ddpm recipe: one class per (shape, colour), and the shipped file draws the class asked for."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from minildm import checkpoint, data, pretrained, recipes, unet

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


def test_each_shape_colour_pair_has_its_own_class_and_back():
    names = recipes.shapes_class_names()
    assert len(names) == recipes.SHAPES_DDPM_CONFIG["num_classes"] == len(data.SHAPES) * len(data.COLOURS) == 15
    assert [recipes.shapes_class(shape, colour) for shape, colour in names] == list(range(15))
    assert names[recipes.shapes_class("triangle", "blue")] == ("triangle", "blue")


def test_the_recipe_builds_a_three_channel_unet_with_a_null_class():
    torch.manual_seed(0)
    model = recipes.class_denoiser(**recipes.SHAPES_DDPM_CONFIG)
    assert isinstance(model, unet.UNet) and model.num_classes == 15
    y = torch.tensor([0, 14, 15])  # 15 is the null class
    assert model(torch.randn(3, 3, 16, 16), torch.tensor([0, 500, 999]), y).shape == (3, 3, 16, 16)


def test_adherence_counts_an_image_right_only_when_the_judge_reads_one_object_of_that_shape_and_colour():
    right = data.render([{"shape": "square", "colour": "green", "size": "large", "position": "center"}], size=16)
    wrong_colour = data.render([{"shape": "square", "colour": "red", "size": "large", "position": "center"}], size=16)
    two = data.render([{"shape": "square", "colour": "green", "size": "small", "position": "top left"},
                       {"shape": "circle", "colour": "blue", "size": "small", "position": "bottom right"}], size=16)
    images = torch.cat([right.images, wrong_colour.images, two.images])
    c = recipes.shapes_class("square", "green")
    rates = recipes.shapes_adherence(images, torch.tensor([c, c, c]))
    assert rates == pytest.approx({"shape": 2 / 3, "colour": 1 / 3, "both": 1 / 3})


def test_classifier_adherence_compares_the_classifiers_shape_and_colour_with_the_class():
    from minildm.classifier import Classifier

    class Reads(Classifier):  # reads every image as a blue triangle
        def predict(self, x, batch_size=512):
            n = len(x)
            return {"shape": torch.full((n,), data.ALL_SHAPES.index("triangle")),
                    "colour": torch.full((n,), list(data.COLOURS).index("blue"))}

    reader = Reads(3, recipes.SHAPES_CLASSIFIER_CONFIG["heads"], 32, width=8, feature_dim=8)
    classes = torch.tensor([recipes.shapes_class(*pair) for pair in
                            [("triangle", "blue"), ("triangle", "red"), ("circle", "blue"), ("square", "green")]])
    rates = recipes.classifier_adherence(reader, torch.zeros(4, 3, 16, 16), classes)
    assert rates == {"shape": 0.5, "colour": 0.5, "both": 0.25}


def test_the_shipped_shapes_ddpm_file_is_small_fp16_and_matches_its_manifest():
    path = REPO_DATA / "checkpoints" / "shapes-ddpm.safetensors"
    entry = json.loads((REPO_DATA / "checkpoints" / "manifest.json").read_text())["shapes-ddpm"]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["bytes"] == path.stat().st_size < 2_000_000
    assert entry["config"] == recipes.SHAPES_DDPM_CONFIG
    tensors, meta = checkpoint.load(path)
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())


# chance for "both" is 1/15; the shipped model's recorded rates are in the manifest
GOOD_ENOUGH = 0.6


def _both(model) -> float:
    """Shape and colour right, as read by the shipped shapes classifier, on 30 samples at guidance 2."""
    reader = pretrained.load("shapes-classifier", device="cpu", train_if_missing=False, progress=False)
    with torch.no_grad():
        x, y = recipes.shapes_samples(model.eval(), 30, guidance_scale=2.0, steps=20)
    return recipes.classifier_adherence(reader, x, y)["both"]


def test_the_shipped_shapes_ddpm_draws_the_shape_and_colour_asked_for(repo_data):
    model = pretrained.load("shapes-ddpm", device="cpu", train_if_missing=False, progress=False)
    assert _both(model) >= GOOD_ENOUGH


def test_an_untrained_shapes_network_fails_the_same_threshold():
    torch.manual_seed(0)
    assert _both(recipes.class_denoiser(**recipes.SHAPES_DDPM_CONFIG)) < GOOD_ENOUGH
