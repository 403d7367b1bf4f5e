"""Data sets: shapes with captions, digits, 2-D toys, photos and image folders."""

import math
import re
import socket

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from minildm import data

# ---------------------------------------------------------------------------- shapes


@pytest.fixture(scope="module")
def one():
    """400 single-object images, stars included, so every shape is checked."""
    return data.shapes(400, size=32, seed=3, shape_set=data.ALL_SHAPES)


@pytest.fixture(scope="module")
def two():
    return data.shapes(600, size=32, n_objects=2, seed=4)


def rgb(name_or_triple):
    triple = data.COLOURS.get(name_or_triple) or data.BACKGROUNDS.get(name_or_triple) or name_or_triple
    return torch.tensor(triple, dtype=torch.float32) / 127.5 - 1


def test_shapes_same_seed_same_batch_and_a_new_seed_a_new_one():
    a, b = data.shapes(64, seed=11, n_objects=(1, 2)), data.shapes(64, seed=11, n_objects=(1, 2))
    for name in ("images", "labels", "backgrounds", "masks", "edges", "low_res"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(a.centres.nan_to_num(-7), b.centres.nan_to_num(-7))
    assert a.captions == b.captions and a.attributes == b.attributes
    c = data.shapes(64, seed=12, n_objects=(1, 2))
    assert not torch.equal(a.images, c.images) and a.captions != c.captions


def test_shapes_types_shapes_and_ranges(two):
    b = data.shapes(10, size=16, n_objects=(1, 2), seed=0)
    assert len(b) == 10 and len(b.captions) == 10 and len(b.attributes) == 10
    assert b.images.shape == (10, 3, 16, 16) and b.images.dtype == torch.float32
    assert b.masks.shape == b.edges.shape == (10, 1, 16, 16)
    assert b.low_res.shape == (10, 3, 4, 4)
    assert b.labels.shape == (10, 2, 4) and b.labels.dtype == torch.int64
    assert b.centres.shape == (10, 2, 2) and b.backgrounds.shape == (10,)
    for x in (two.images, two.low_res):
        assert x.min() >= -1 and x.max() <= 1
    assert set(two.masks.unique().tolist()) == {0.0, 1.0}
    assert set(two.edges.unique().tolist()) == {-1.0, 1.0}
    # the mix really mixes: -1 padding (and NaN centres) exactly where an image has one object
    single = torch.tensor([len(a["objects"]) == 1 for a in b.attributes])
    assert 0 < single.sum() < 10
    assert torch.equal((b.labels[:, 1] == -1).all(1), single)
    assert torch.equal(b.centres[:, 1].isnan().all(1), single)


def test_captions_follow_the_grammar_and_parse_back_to_the_labels(one, two):
    sizes, colours, shapes = "|".join(data.SIZES), "|".join(data.COLOURS), "|".join(data.ALL_SHAPES)
    phrase = rf"a ({sizes}) ({colours}) ({shapes}) in the ({'|'.join(data.POSITIONS)})"
    grammar = re.compile(rf"{phrase}( and {phrase})? on ({'|'.join(data.BACKGROUNDS)})")
    for batch in (one, two):
        for i in range(len(batch)):
            caption, attributes = batch.captions[i], batch.attributes[i]
            assert grammar.fullmatch(caption), caption
            assert data.parse_caption(caption) == attributes
            assert list(data.BACKGROUNDS)[batch.backgrounds[i]] == attributes["background"]
            for j, obj in enumerate(attributes["objects"]):
                decoded = {c: vocab[k] for c, vocab, k in
                           zip(data.LABEL_COLUMNS, data.LABEL_VOCABULARIES, batch.labels[i, j].tolist())}
                assert decoded == obj
    assert data.parse_caption("a small red circle in the top left on white") == {
        "objects": [{"shape": "circle", "colour": "red", "size": "small", "position": "top left"}],
        "background": "white"}


def test_object_interiors_have_the_table_colour_and_the_background_is_flat(one, two):
    for batch in (one, two):
        for i in range(0, len(batch), 7):
            image, mask = batch.images[i], batch.masks[i, 0].numpy().astype(bool)
            # every shape lies inside the circle of radius sqrt(2) h around its centre (a
            # square's corners); a pixel (half-diagonal 0.71) farther out than that is background
            far = torch.ones(32, 32, dtype=torch.bool)
            centre_of_pixel = torch.arange(32) + 0.5
            for j, obj in enumerate(batch.attributes[i]["objects"]):
                cx, cy = batch.centres[i, j].tolist()
                h = data.SIZES[obj["size"]] * 16
                d = ((centre_of_pixel[None] - cx) ** 2 + (centre_of_pixel[:, None] - cy) ** 2).sqrt()
                far &= d > math.sqrt(2) * h + 0.72
            bg = rgb(batch.attributes[i]["background"])
            assert far.sum() > 100
            assert torch.equal(image[:, far], bg[:, None].expand(3, int(far.sum())))
            assert not mask[far.numpy()].any()
            # single objects: every pixel two pixels inside the mask is fully covered, flat colour
            if len(batch.attributes[i]["objects"]) == 1 and batch.attributes[i]["objects"][0]["shape"] != "star":
                interior = torch.from_numpy(ndimage.binary_erosion(mask, iterations=2))
                assert interior.any()
                colour = rgb(batch.attributes[i]["objects"][0]["colour"])
                assert torch.equal(image[:, interior], colour[:, None].expand(3, int(interior.sum())))
    # two objects: the later one is drawn on top, so its centre pixel has its colour
    for i in range(0, len(two), 11):
        obj = two.attributes[i]["objects"][1]
        x, y = two.centres[i, 1].long().tolist()
        if obj["shape"] != "triangle":  # a triangle's box centre may lie near its slanted side
            assert torch.equal(two.images[i, :, y, x], rgb(obj["colour"]))


def test_position_and_size_agree_with_the_mask(one):
    s = 32
    for i in range(len(one)):
        obj = one.attributes[i]["objects"][0]
        side = data.SIZES[obj["size"]] * s
        # analytic bounding box: a star's tips lie on the circle of diameter side, one up
        width, height = {"star": (side * math.sin(2 * math.pi / 5), side * (1 + math.cos(math.pi / 5)) / 2)}.get(
            obj["shape"], (side, side))
        # "ink": pixels the object touches at all; they span the box to within a pixel or two
        # (a thin star tip can fall between the 4x4 supersamples)
        ink = (one.images[i] != rgb(one.attributes[i]["background"])[:, None, None]).any(0).numpy()
        ys, xs = np.nonzero(ink)
        assert width - 1 <= xs.max() - xs.min() + 1 < width + 2 and height - 1 <= ys.max() - ys.min() + 1 < height + 2
        # the mask (covered at least half): its box matches the object's for convex shapes
        ys, xs = np.nonzero(one.masks[i, 0].numpy())
        box_x, box_y = (xs.max() + xs.min() + 1) / 2, (ys.max() + ys.min() + 1) / 2
        if obj["shape"] != "star":  # a star's thin tips are less than half covered
            assert abs(xs.max() - xs.min() + 1 - side) <= 2 and abs(ys.max() - ys.min() + 1 - side) <= 2
            assert abs(box_x - one.centres[i, 0, 0].item()) <= 1
        # the centre lies in the named region (quadrant, or the middle fifth for "center")
        cx, cy = one.centres[i, 0].tolist()
        if obj["position"] == "center":
            assert abs(cx - s / 2) < s / 10 and abs(cy - s / 2) < s / 10
        else:
            vertical, horizontal = obj["position"].split()
            assert (cx < s / 2) == (horizontal == "left") and (cy < s / 2) == (vertical == "top")
            assert (box_x < s / 2) == (horizontal == "left") and (box_y < s / 2) == (vertical == "top")
        # the whole object is on the canvas
        assert side / 2 <= cx <= s - side / 2 and side / 2 <= cy <= s - side / 2


@pytest.mark.parametrize("shape", data.ALL_SHAPES)
def test_each_shape_covers_its_analytic_area(shape):
    # large object, 64 px: area from the coverage (alpha) of a red shape on black
    side = data.SIZES["large"] * 64
    h = side / 2
    r = h * math.cos(2 * math.pi / 5) / math.cos(math.pi / 5)  # a regular star's inner radius
    star_edge = math.dist((h, 0), (r * math.cos(math.pi / 5), r * math.sin(math.pi / 5)))
    area, perimeter = {"circle": (math.pi * h**2, 2 * math.pi * h), "square": (side**2, 4 * side),
                       "triangle": (side**2 / 2, side * (1 + math.sqrt(5))),
                       "star": (5 * h * r * math.sin(math.pi / 5), 10 * star_edge)}[shape]
    b = data.render({"shape": shape, "colour": "red", "size": "large", "position": "center"}, size=64)
    alpha = (b.images[0, 0] - rgb("black")[0]) / (rgb("red")[0] - rgb("black")[0])
    # 4x4 supersampling misplaces the outline by at most a quarter pixel
    assert abs(alpha.sum().item() - area) <= perimeter / 4
    assert abs(b.masks.sum().item() - area) <= perimeter


def test_two_objects_never_share_a_position_and_barely_overlap(two):
    seen_sizes = set()
    for i in range(len(two)):
        (a, b) = two.attributes[i]["objects"]
        assert a["position"] != b["position"]
        seen_sizes.add((a["size"], b["size"]))
        if "large" in (a["size"], b["size"]):
            assert "center" not in (a["position"], b["position"]), two.captions[i]
        if a["size"] == b["size"] == "large":  # only diagonal corners keep two large ones apart
            assert {a["position"], b["position"]} in ({"top left", "bottom right"}, {"top right", "bottom left"})
        # overlap of the true boxes, jitter included: small beside the smaller box's area
        (ca, cb), (ha, hb) = two.centres[i].tolist(), (data.SIZES[a["size"]] * 16, data.SIZES[b["size"]] * 16)
        wx = max(0, min(ca[0] + ha, cb[0] + hb) - max(ca[0] - ha, cb[0] - hb))
        wy = max(0, min(ca[1] + ha, cb[1] + hb) - max(ca[1] - ha, cb[1] - hb))
        assert wx * wy <= 0.2 * (2 * min(ha, hb)) ** 2, two.captions[i]
    assert seen_sizes == {("small", "small"), ("small", "large"), ("large", "small"), ("large", "large")}


def pairs(batch):
    return {(o["colour"], o["shape"]) for a in batch.attributes for o in a["objects"]}


def test_held_out_pairs_never_appear_and_only_draws_only_those():
    # attributes only: an 8 px canvas is enough and cheap
    everything = pairs(data.shapes(600, size=8, n_objects=2, seed=5))
    assert set(data.HELD_OUT) <= everything  # without exclude they do appear
    assert everything == {(c, s) for c in data.COLOURS for s in data.SHAPES}
    kept = pairs(data.shapes(600, size=8, n_objects=2, seed=5, exclude=data.HELD_OUT))
    assert kept == everything - set(data.HELD_OUT)
    only = [("red", "star"), ("blue", "circle")]
    assert pairs(data.shapes(300, size=8, seed=6, only=only)) == set(only)


def test_star_appears_only_when_asked_for():
    default = data.shapes(1000, size=8, n_objects=(1, 2), seed=7)
    assert all("star" not in c for c in default.captions)
    assert not (default.labels[..., 0] == data.ALL_SHAPES.index("star")).any()
    asked = data.shapes(300, size=8, seed=7, shape_set=["star"])
    assert all(" star " in c for c in asked.captions)


def test_edges_are_the_inner_outline_of_the_mask(two):
    from skimage.segmentation import find_boundaries

    for i in range(0, len(two), 5):
        mask = np.pad(two.masks[i, 0].numpy().astype(bool), 1)  # off the canvas is outside
        outline = find_boundaries(mask, mode="inner", connectivity=1)[1:-1, 1:-1]
        assert np.array_equal(two.edges[i, 0].numpy() == 1, outline)


def test_low_res_is_the_4x4_box_average(two):
    n, c, h, w = two.images.shape
    boxes = two.images.reshape(n, c, h // 4, 4, w // 4, 4).mean((3, 5))
    assert torch.allclose(two.low_res, boxes, atol=1e-6)


def test_indexing_returns_sub_batches():
    b = data.shapes(8, n_objects=(1, 2), seed=1)
    assert len(b[3]) == 1 and b[3].captions == [b.captions[3]] and torch.equal(b[3].images, b.images[3:4])
    assert b[-1].captions == [b.captions[-1]]
    part = b[2:5]
    assert part.captions == b.captions[2:5] and torch.equal(part.masks, b.masks[2:5])
    picked = b[[6, 0]]
    assert picked.attributes == [b.attributes[6], b.attributes[0]]
    assert torch.equal(picked.labels, b.labels[[6, 0]])
    chosen = b[b.backgrounds == 0]
    assert all(a["background"] == "black" for a in chosen.attributes)
    with pytest.raises(IndexError):
        b[8]


def test_from_caption_and_render_draw_exactly_what_is_asked():
    caption = "a small blue triangle in the top left and a large green square in the bottom right on white"
    b = data.from_caption(caption, size=64)
    assert b.captions == [caption] and b.attributes == [data.parse_caption(caption)]
    # no seed: centres exactly at the anchors
    expected = torch.tensor([data.anchor("top left", "small"), data.anchor("bottom right", "large")]) * 64
    assert torch.allclose(b.centres[0], expected)
    square = data.render({"shape": "square", "colour": "green", "size": "large", "position": "center"},
                         background="white", size=32)
    # a 17.6 px square centred at pixel 16: columns 8..23 fully inside, flat green
    assert torch.equal(square.images[0, :, 8:24, 8:24], rgb("green")[:, None, None].expand(3, 16, 16))
    assert torch.equal(square.images[0, :, :, :6], rgb("white")[:, None, None].expand(3, 32, 6))
    many = data.from_caption(["a large red star in the center on black"] * 3, seed=2)
    assert len(many) == 3 and not torch.equal(many.centres[0], many.centres[1])  # jitter with a seed


def test_anchors_keep_every_object_in_its_region_and_on_the_canvas():
    for size, side in data.SIZES.items():
        assert data.anchor("center", size) == (0.5, 0.5)
        for position in data.POSITIONS[:4]:
            x, y = data.anchor(position, size)
            vertical, horizontal = position.split()
            assert (x < 0.5) == (horizontal == "left") and (y < 0.5) == (vertical == "top")
            # even fully jittered, the bounding box stays on the canvas
            assert side / 2 + data.JITTER <= min(x, y, 1 - x, 1 - y)


@pytest.mark.parametrize("caption, word", [
    ("a small pink circle in the top left on white", "pink"),
    ("a small red hexagon in the top left on white", "hexagon"),
    ("a small red circle in the middle on white", "middle"),
    ("a small red circle in the top left on grey", "grey"),
    ("a tiny red circle in the top left on white", "tiny"),
    ("a small red circle at the top left on white", "at"),
    ("a small red circle in the top left on white please", "please"),
])
def test_parse_caption_names_the_unknown_word(caption, word):
    with pytest.raises(ValueError, match=rf"'{word}'") as err:
        data.parse_caption(caption)
    assert "expected" in str(err.value) or "unexpected" in str(err.value)


def test_parse_caption_lists_the_vocabulary_and_rejects_non_strings():
    with pytest.raises(ValueError, match="red.*green.*blue"):
        data.parse_caption("a small pink circle in the top left on white")
    with pytest.raises(ValueError, match="ends early"):
        data.parse_caption("a small red circle in the top left")
    with pytest.raises(TypeError, match="caption"):
        data.parse_caption(["a small red circle in the top left on white"])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n=0), ValueError, "n must"),
    (dict(n=2.0), TypeError, "n must"),
    (dict(n=2, size=30), ValueError, "size.*divisible by 4"),
    (dict(n=2, size=4), ValueError, "size must be at least 8"),
    (dict(n=2, size="32"), TypeError, "size"),
    (dict(n=2, n_objects=3), ValueError, "n_objects"),
    (dict(n=2, seed=-1), ValueError, "seed"),
    (dict(n=2, shape_set=["hexagon"]), ValueError, "shape_set.*hexagon"),
    (dict(n=2, shape_set="circle"), TypeError, "shape_set"),
    (dict(n=2, exclude=[("triangle", "red")]), ValueError, "exclude.*colour, shape"),
    (dict(n=2, only=[("red", "circle")], shape_set=["star"]), ValueError, "shape_set or only"),
    (dict(n=2, exclude=[(c, s) for c in data.COLOURS for s in data.SHAPES]), ValueError, "exclude leaves"),
])
def test_shapes_rejects_bad_arguments_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.shapes(**kwargs)


def test_render_rejects_bad_objects_by_name():
    good = {"shape": "circle", "colour": "red", "size": "small", "position": "center"}
    with pytest.raises(ValueError, match="colour 'pink'"):
        data.render({**good, "colour": "pink"})
    with pytest.raises(ValueError, match="keys"):
        data.render({**good, "angle": 3})
    with pytest.raises(ValueError, match="background"):
        data.render(good, background="grey")
    with pytest.raises(TypeError, match="objects"):
        data.render("a small red circle")


# ---------------------------------------------------------------------------- digits


def test_digits_are_sklearns_digits_in_minus_one_to_one():
    from sklearn.datasets import load_digits

    ref = load_digits()
    x, y = data.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(ref.images).float() / 8 - 1)
    assert torch.equal(y, torch.from_numpy(ref.target))
    assert x.min() == -1 and x.max() == 1


def test_digits_splits_are_fixed_disjoint_and_stratified():
    x_train, y_train = data.digits(split="train")
    x_test, y_test = data.digits(split="test")
    assert len(y_train) + len(y_test) == 1797 and len(y_test) == 360
    x_all, _ = data.digits()
    rows = {tuple(r) for r in x_all.flatten(1).tolist()}
    train_rows, test_rows = {tuple(r) for r in x_train.flatten(1).tolist()}, {tuple(r) for r in x_test.flatten(1).tolist()}
    assert train_rows | test_rows <= rows and len(train_rows & test_rows) < 5  # a few digits are duplicates
    assert torch.equal(data.digits(split="test")[0], x_test)
    per_class = torch.bincount(y_test, minlength=10).float() / torch.bincount(data.digits()[1], minlength=10)
    assert torch.allclose(per_class, torch.full((10,), 0.2), atol=0.02)


def test_digits_upsample_bilinearly():
    from skimage.transform import resize

    x8, _ = data.digits()
    x16, y16 = data.digits(16)
    assert x16.shape == (1797, 1, 16, 16) and len(y16) == 1797
    expected = resize(x8[:20, 0].numpy().transpose(1, 2, 0), (16, 16), order=1, mode="edge", anti_aliasing=False)
    assert np.allclose(x16[:20, 0].numpy(), expected.transpose(2, 0, 1), atol=1e-6)
    x32, _ = data.digits(32)
    assert x32.shape[-1] == 32 and x32.min() >= -1 and x32.max() <= 1


def test_digits_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.digits(split="validation")
    with pytest.raises(ValueError, match="size"):
        data.digits(4)
    with pytest.raises(TypeError, match="size"):
        data.digits(16.0)


# ---------------------------------------------------------------------------- toy2d


@pytest.mark.parametrize("name", data.TOY2D)
@pytest.mark.parametrize("noise", [None, 0.0, 0.3])
def test_toy2d_is_standardised(name, noise):
    n = 100_000
    x = data.toy2d(name, n, seed=1, noise=noise)
    assert x.shape == (n, 2) and x.dtype == torch.float32
    # mean 0 within 4 standard errors; std 1 within 4 standard errors of a std (~ std / sqrt(2n),
    # wider for these heavy-bodied mixtures, so allow 3 %)
    assert x.double().mean(0).abs().max() < 4 / math.sqrt(n)
    assert torch.allclose(x.double().std(0), torch.ones(2, dtype=torch.float64), atol=0.03)


def test_toy2d_is_deterministic_by_seed():
    assert torch.equal(data.toy2d("moons", 50, seed=2), data.toy2d("moons", 50, seed=2))
    assert not torch.equal(data.toy2d("moons", 50, seed=2), data.toy2d("moons", 50, seed=3))


@pytest.mark.parametrize("name", ["moons", "swiss_roll"])
def test_toy2d_lies_on_sklearns_curves(name):
    from sklearn.datasets import make_moons, make_swiss_roll

    if name == "moons":
        ref = make_moons(40_000, noise=0.0, random_state=0)[0]
    else:
        ref = make_swiss_roll(40_000, noise=0.0, random_state=0)[0][:, [0, 2]]
    ref = (ref - ref.mean(0)) / ref.std(0)  # sklearn's curve, standardised by its own moments
    ours = data.toy2d(name, 2_000, seed=0, noise=0.0).numpy()
    distance, _ = cKDTree(ref).query(ours)
    assert distance.max() < 0.03


def test_toy2d_gaussians_are_eight_equal_modes_on_a_circle():
    x = data.toy2d("gaussians", 16_000, seed=0, noise=0.0).double()
    radius = x.norm(dim=1)
    assert torch.allclose(radius, torch.full_like(radius, math.sqrt(2)), atol=1e-5)  # 2 / std sqrt(2)
    angle = torch.atan2(x[:, 1], x[:, 0])
    k = torch.round(angle / (math.pi / 4)).long() % 8  # nearest multiple of 45 degrees
    assert torch.allclose(angle.cos(), (k.double() * math.pi / 4).cos(), atol=1e-5)
    assert torch.allclose(angle.sin(), (k.double() * math.pi / 4).sin(), atol=1e-5)
    share = torch.bincount(k, minlength=8).double() / len(k)
    assert torch.allclose(share, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.015)


def test_toy2d_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown toy2d name 'spiral'.*moons.*swiss_roll.*gaussians"):
        data.toy2d("spiral", 10)
    with pytest.raises(ValueError, match="n must"):
        data.toy2d("moons", 0)
    with pytest.raises(ValueError, match="noise"):
        data.toy2d("moons", 10, noise=-0.1)
    with pytest.raises(TypeError, match="noise"):
        data.toy2d("moons", 10, noise="high")


# ---------------------------------------------------------------------------- photos, folders


def test_every_listed_photo_loads_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("photo() tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert data.photo_names() == list(data.PHOTOS) and len(data.PHOTOS) >= 20
    for name in data.photo_names():
        x = data.photo(name, size=16)
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32, name
        assert x.min() >= -1 and x.max() <= 1 and x.std() > 0, name


def test_photo_at_full_size_is_the_picture_itself():
    from skimage import data as skdata

    astronaut = data.photo("astronaut", size=512)  # already square: no crop, no resize
    assert torch.equal(astronaut, torch.from_numpy(skdata.astronaut()).permute(2, 0, 1).float() / 127.5 - 1)
    camera = data.photo("camera", size=512)  # grayscale: three equal channels
    assert torch.equal(camera[0], torch.from_numpy(skdata.camera()).float() / 127.5 - 1)
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[1], camera[2])


def test_photo_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown photo 'lena'.*astronaut"):
        data.photo("lena")


def test_image_folder_centre_crops_resizes_and_sorts(tmp_path):
    # b.png: 60 x 20, blue | red | green thirds -> the centre square is all red
    stripes = np.zeros((20, 60, 3), np.uint8)
    stripes[:, :20] = (0, 0, 255)
    stripes[:, 20:40] = (255, 0, 0)
    stripes[:, 40:] = (0, 255, 0)
    Image.fromarray(stripes).save(tmp_path / "b.png")
    Image.fromarray(np.full((30, 30, 3), (10, 200, 30), np.uint8)).save(tmp_path / "a.JPG", quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    x = data.image_folder(tmp_path, size=8)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x[1], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 8, 8))
    assert torch.allclose(x[0], (torch.tensor([10.0, 200.0, 30.0]) / 127.5 - 1)[:, None, None].expand(3, 8, 8), atol=0.05)


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no .jpg"):
        data.image_folder(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        data.image_folder(tmp_path / "x.txt")
    with pytest.raises(TypeError, match="path"):
        data.image_folder(3)
