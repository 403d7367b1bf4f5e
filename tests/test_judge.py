"""The shapes judge: reading attributes back from pixels, and scoring images against prompts.

The ground truth is what the generator drew (minildm.data), never the judge's own output.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from minildm import data, judge

PER_OBJECT = ("colour", "shape", "size", "position")


def rates(batch: data.ShapesBatch, images: torch.Tensor) -> dict:
    """Per-attribute agreement of read(images) with the attributes the generator drew,
    objects paired by the nearest true centre (independent of the judge's own matching)."""
    scenes = judge.read(images)
    size = images.shape[-1]
    right = {key: 0 for key in ("background", "count") + PER_OBJECT}
    for truth, scene, centres in zip(batch.attributes, scenes, batch.centres):
        right["background"] += scene["background"] == truth["background"]
        right["count"] += len(scene["objects"]) == len(truth["objects"])
        for key in PER_OBJECT:
            ok = len(scene["objects"]) == len(truth["objects"])
            for obj, centre in zip(truth["objects"], centres):
                if ok:
                    found = min(scene["objects"], key=lambda o: (o["centre"][0] * size - centre[0]) ** 2
                                + (o["centre"][1] * size - centre[1]) ** 2)
                    ok = found[key] == obj[key]
            right[key] += ok
    return {key: value / len(batch) for key, value in right.items()}


def degrade(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    """What a sampler might give: a (1 2 1)/4 blur, Gaussian noise of the given std, clamped."""
    kernel = torch.tensor([0.25, 0.5, 0.25])
    kernel = (kernel[:, None] * kernel[None]).expand(3, 1, 3, 3).contiguous()  # (3, 1, 3, 3)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)  # (N, 3, S, S)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (blurred + std * noise).clamp(-1, 1)


@pytest.fixture(scope="module")
def one():
    """1000 one-object images with every shape (stars too) and every (colour, shape) pair,
    the held-out pairs included."""
    return data.shapes(1000, size=32, seed=21, shape_set=data.ALL_SHAPES)


@pytest.fixture(scope="module")
def two():
    return data.shapes(500, size=32, n_objects=2, seed=22, shape_set=data.ALL_SHAPES)


def test_read_recovers_every_attribute_of_one_object_images(one):
    got = rates(one, one.images)
    print("32 px, one object, clean:", got)
    assert {o["colour"] + " " + o["shape"] for a in one.attributes for o in a["objects"]} >= {
        f"{c} {s}" for c, s in data.HELD_OUT}
    assert all(r >= 0.99 for r in got.values()), got


def test_read_recovers_every_attribute_of_two_object_images(two):
    got = rates(two, two.images)
    print("32 px, two objects, clean:", got)
    assert all(r >= 0.99 for r in got.values()), got


@pytest.mark.parametrize("std", [0.1, 0.2])
def test_read_tolerates_blur_and_noise(one, two, std):
    got_one = rates(one[:400], degrade(one.images[:400], std))
    got_two = rates(two[:300], degrade(two.images[:300], std, seed=1))
    print(f"32 px, blur + noise std {std}: one object {got_one}, two objects {got_two}")
    assert all(r >= 0.99 for r in got_one.values()), got_one
    assert all(r >= 0.99 for r in got_two.values()), got_two


def test_read_held_out_pairs_only():
    batch = data.shapes(100, size=32, seed=23, only=data.HELD_OUT, n_objects=(1, 2))
    got = rates(batch, batch.images)
    assert all(r >= 0.98 for r in got.values()), got


def test_read_on_a_16_pixel_canvas():
    # a small shape is 4.8 pixels across here: clean one-object images still read exactly,
    # blur + noise costs a few percent on shape and size, two touching objects more
    one = data.shapes(400, size=16, seed=24, shape_set=data.ALL_SHAPES)
    two = data.shapes(200, size=16, seed=25, n_objects=2, shape_set=data.ALL_SHAPES)
    clean, noisy, pairs = rates(one, one.images), rates(one, degrade(one.images, 0.1)), rates(two, two.images)
    print("16 px: one object clean", clean, "noisy (std 0.1)", noisy, "two objects clean", pairs)
    assert all(r >= 0.99 for r in clean.values()), clean
    assert all(r >= 0.93 for r in noisy.values()), noisy
    assert all(r >= 0.9 for r in pairs.values()), pairs


def on_background(batch, grey: float) -> torch.Tensor:
    """One-object images redrawn on a flat background of value ``grey`` in [-1, 1]: each pixel
    p = b + alpha (c - b) keeps its coverage alpha and colour c, only b changes."""
    out = []
    for image, attributes in zip(batch.images, batch.attributes):
        b = torch.tensor(data.BACKGROUNDS[attributes["background"]], dtype=torch.float32) / 127.5 - 1  # (3,)
        c = torch.tensor(data.COLOURS[attributes["objects"][0]["colour"]], dtype=torch.float32) / 127.5 - 1  # (3,)
        # alpha = <p - b, c - b> / |c - b|^2
        alpha = torch.einsum("khw,k->hw", image - b[:, None, None], c - b) / (c - b).pow(2).sum()  # (H, W)
        g = torch.full((3,), grey)
        out.append(g[:, None, None] + alpha * (c - g)[:, None, None])  # (3, H, W)
    return torch.stack(out)


@pytest.mark.parametrize("grey", [-0.7, 0.7])
def test_read_mixes_colours_with_the_grey_background_generated_images_often_have(grey):
    # a sampler seldom draws a pure black or white background; mixing with the palette's b
    # instead of the image's, the judge read under 6 in 10 of these shapes right
    batch = data.shapes(300, size=16, seed=26)
    dark = torch.tensor([a["background"] == ("black" if grey < 0 else "white") for a in batch.attributes])
    got = rates(batch[dark], on_background(batch[dark], grey))
    assert all(r >= 0.99 for r in got.values()), got


def test_read_tells_apart_two_touching_shapes_of_one_colour():
    # a large square in the top left and a small circle moved left until it touches the
    # square along its side: one blob of one colour that holds two shapes
    square = data.render({"shape": "square", "colour": "green", "size": "large", "position": "top left"}).images
    circle = data.render({"shape": "circle", "colour": "green", "size": "small", "position": "top right"}).images
    edge_gap = round((1 - 0.25 - 0.15 - 0.31 - 0.275) * 32)  # circle's left edge to the square's right
    both = torch.maximum(square, torch.roll(circle, -edge_gap - 1, dims=-1))  # (1, 3, 32, 32), over black
    objects = judge.read(both)[0]["objects"]
    assert sorted((o["shape"], o["size"]) for o in objects) == [("circle", "small"), ("square", "large")]


def test_read_masks_cover_the_generator_masks(one):
    batch = one[:50]
    for scene, mask in zip(judge.read(batch.images), batch.masks[:, 0] > 0):
        found = scene["objects"][0]["mask"]
        assert found.shape == mask.shape and found.dtype == torch.bool
        # intersection over union of the judge's mask with the renderer's coverage >= 1/2 mask
        assert (found & mask).sum() / (found | mask).sum() >= 0.7


def test_read_an_empty_canvas_finds_no_object():
    blank = torch.ones(2, 3, 32, 32)
    blank[1] = -1
    scenes = judge.read(blank)
    assert [s["background"] for s in scenes] == ["white", "black"]
    assert all(s["objects"] == [] for s in scenes)


def test_score_is_one_on_the_true_captions(one, two):
    for batch in (one[:100], two[:100]):
        result = judge.score(batch.images, batch.captions)
        assert set(result.rates) == set(judge.ATTRIBUTES) | {"all"}
        assert len(result.details) == len(batch)
        correct = [all(d["correct"].values()) for d in result.details]
        assert result.rates["all"] == sum(correct) / len(batch) >= 0.99


def caption(attributes: dict) -> str:
    """The caption grammar of DESIGN.md, written out here."""
    phrases = [f"a {o['size']} {o['colour']} {o['shape']} in the {o['position']}" for o in attributes["objects"]]
    return " and ".join(phrases) + f" on {attributes['background']}"


def _caption_with(attributes: dict, obj: int, key: str, value: str) -> str:
    changed = copy.deepcopy(attributes)
    changed["objects"][obj][key] = value
    return caption(changed)


@pytest.mark.parametrize("key", ["colour", "shape", "size", "position"])
def test_score_flags_exactly_the_attribute_a_wrong_caption_changes(one, key):
    batch = one[:60]
    vocabulary = dict(zip(data.LABEL_COLUMNS, data.LABEL_VOCABULARIES))[key]
    wrong = []
    for a in batch.attributes:
        true = a["objects"][0][key]
        wrong.append(_caption_with(a, 0, key, vocabulary[(vocabulary.index(true) + 1) % len(vocabulary)]))
    result = judge.score(batch.images, wrong)
    assert result.rates[key] == 0.0 and result.rates["all"] == 0.0
    for other in set(judge.ATTRIBUTES) - {key}:
        assert result.rates[other] == 1.0, (key, other)


def test_score_flags_colours_swapped_between_two_objects(two):
    batch = two[:100]
    keep = [i for i, a in enumerate(batch.attributes) if a["objects"][0]["colour"] != a["objects"][1]["colour"]]
    batch = batch[keep]
    swapped = []
    for a in batch.attributes:
        changed = copy.deepcopy(a)
        first, second = changed["objects"]
        first["colour"], second["colour"] = second["colour"], first["colour"]
        swapped.append(caption(changed))
    right = judge.score(batch.images, batch.captions)
    wrong = judge.score(batch.images, swapped)
    assert wrong.rates["colour"] == 0.0
    for other in ("background", "count", "shape", "size", "position"):
        assert wrong.rates[other] == right.rates[other]


def test_score_flags_a_missing_object():
    batch = data.from_caption(["a large red square in the top left on black"])
    result = judge.score(batch.images, ["a large red square in the top left and a small blue circle "
                                        "in the bottom right on black"])
    assert result.details[0]["correct"] == {"background": True, "count": False, "colour": False,
                                            "shape": False, "size": False, "position": False}


def test_bad_input_raises_naming_the_argument(one):
    images = one.images[:2]
    with pytest.raises(TypeError, match="images"):
        judge.read(images.numpy())
    with pytest.raises(TypeError, match="images"):
        judge.read((images * 127.5 + 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match="images"):
        judge.read(images[:, :1])  # (N, 1, S, S)
    with pytest.raises(ValueError, match="images"):
        judge.read(images[0])  # (3, S, S)
    with pytest.raises(ValueError, match="images"):
        judge.read(images[..., :24])  # not square
    with pytest.raises(ValueError, match="at least 16"):
        judge.read(data.shapes(2, size=8).images)
    with pytest.raises(ValueError, match="multiple of 4"):
        judge.read(torch.zeros(1, 3, 18, 18))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        judge.read(images * 127.5 + 127.5)  # 0..255
    with pytest.raises(ValueError, match="finite"):
        judge.read(torch.full_like(images, float("nan")))
    with pytest.raises(ValueError, match="prompts"):
        judge.score(images, one.captions[:1])
    with pytest.raises(TypeError, match="prompts"):
        judge.score(images[:1], one.captions[0])
    with pytest.raises(ValueError, match="unknown"):
        judge.score(images[:1], ["a large pink square in the top left on black"])
