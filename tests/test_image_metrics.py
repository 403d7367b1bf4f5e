"""FID, KID, label agreement and memorisation, each against an independent reference."""

import numpy as np
import pytest
import torch
from scipy import linalg

from minildm import data, metrics, pretrained
from minildm.classifier import Classifier, cross_entropy


def net(in_channels=1, heads=None, image_size=16, seed=0):
    torch.manual_seed(seed)
    return Classifier(in_channels, heads, image_size, width=8, feature_dim=16).eval()


def images(n, c=1, size=16, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, size, size, generator=g) * 2 - 1 + shift).clamp(-1, 1)  # (n, c, size, size)


# ---------------------------------------------------------------------------- the classifier

def test_classifier_features_logits_and_predictions_have_the_documented_shapes():
    model = net(3, {"shape": 4, "colour": 5}, image_size=32)
    x = images(6, 3, 32)
    assert model.features(x).shape == (6, 16)
    logits = model(x)
    assert {k: v.shape for k, v in logits.items()} == {"shape": (6, 4), "colour": (6, 5)}
    predicted = model.predict(x, batch_size=4)  # two chunks
    assert all(torch.equal(predicted[k], logits[k].argmax(1)) for k in logits)


def test_classifier_resizes_other_sizes_bilinearly_to_its_image_size():
    model = net(image_size=16)
    x = images(3, size=8)
    up = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(model.features(x), model.features(up))


def test_classifier_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="heads"):
        Classifier(1, {"digit": 1})
    with pytest.raises(ValueError, match="width"):
        Classifier(1, width=12)
    with pytest.raises(ValueError, match="in_channels"):
        Classifier(0)
    with pytest.raises(ValueError, match=r"x must be a float tensor \(B, 1, H, W\)"):
        net()(images(2, c=3))


def test_cross_entropy_sums_the_heads():
    logits = {"a": torch.randn(4, 3), "b": torch.randn(4, 2)}
    labels = {"a": torch.tensor([0, 1, 2, 0]), "b": torch.tensor([1, 0, 1, 1])}
    expected = sum(torch.nn.functional.cross_entropy(logits[k], labels[k]) for k in logits)
    assert torch.allclose(cross_entropy(logits, labels), expected)


# ---------------------------------------------------------------------------- FID and KID

def features64(model, x):
    with torch.no_grad():
        return model.features(x).double().numpy()


def test_fid_is_the_frechet_distance_of_gaussians_fitted_to_the_features():
    model = net()
    real, fake = images(200, seed=1), images(150, seed=2, shift=0.3)
    fr, ff = features64(model, real), features64(model, fake)
    mu_r, mu_f = fr.mean(0), ff.mean(0)
    s_r, s_f = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)  # unbiased (N - 1), as torchmetrics
    # FID = ||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 sqrt(S_r S_f))
    expected = ((mu_r - mu_f) ** 2).sum() + np.trace(s_r + s_f - 2 * linalg.sqrtm(s_r @ s_f).real)
    assert metrics.fid(real, fake, model, batch_size=64) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_fid_is_small_between_two_draws_of_one_distribution_and_large_between_two():
    model = net()
    train, _ = data.digits(16, split="train")
    test, _ = data.digits(16, split="test")
    same = metrics.fid(train, test, model)
    different = metrics.fid(train, images(360, seed=2), model)
    assert same < 0.05 * different


def test_kid_with_one_subset_of_everything_is_the_unbiased_cubic_kernel_mmd():
    model = net()
    real, fake = images(60, seed=1), images(60, seed=2, shift=0.4)
    x, y = torch.from_numpy(features64(model, real)), torch.from_numpy(features64(model, fake))
    d = x.shape[1]

    def k(a, b):  # k(a, b) = (a.b / d + 1)^3   (Binkowski et al. 2018)
        return (a @ b.T / d + 1) ** 3

    n = len(x)
    # MMD_u^2 = sum_{i != j} k(x_i, x_j) / (n (n-1)) + same for y - 2 mean k(x_i, y_j)
    expected = ((k(x, x).sum() - k(x, x).diagonal().sum()) / (n * (n - 1))
                + (k(y, y).sum() - k(y, y).diagonal().sum()) / (n * (n - 1)) - 2 * k(x, y).mean())
    mean, std = metrics.kid(real, fake, model, subsets=1)
    assert mean == pytest.approx(float(expected), rel=1e-5)
    assert std == 0.0


def test_kid_is_reproducible_by_seed_and_leaves_the_global_rng_alone():
    model = net()
    real, fake = images(80, seed=1), images(80, seed=2, shift=0.2)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = metrics.kid(real, fake, model, subsets=5, subset_size=40, seed=7)
    assert torch.equal(torch.rand(1), before)
    assert metrics.kid(real, fake, model, subsets=5, subset_size=40, seed=7) == first
    assert metrics.kid(real, fake, model, subsets=5, subset_size=40, seed=8) != first


def test_fid_and_kid_reject_bad_images():
    model = net()
    with pytest.raises(ValueError, match="fake has 3 channels; the classifier reads 1"):
        metrics.fid(images(4), images(4, c=3), model)
    with pytest.raises(ValueError, match="real must hold at least 2 images"):
        metrics.fid(images(1), images(4), model)
    with pytest.raises(ValueError, match="NaN"):
        metrics.fid(images(4), images(4) * float("nan"), model)
    with pytest.raises(TypeError, match="classifier"):
        metrics.fid(images(4), images(4), torch.nn.Identity())
    with pytest.raises(ValueError, match=r"subset_size must be an int in \[2, 4\]"):
        metrics.kid(images(4), images(5), model, subset_size=5)


# ---------------------------------------------------------------------------- agreement

def test_agreement_is_the_fraction_predicted_as_asked_for():
    model = net()
    x = images(50, seed=3)
    predicted = model.predict(x)["digit"]
    labels = predicted.clone()
    labels[:10] = (labels[:10] + 1) % 10  # 10 of 50 wrong
    assert metrics.agreement(model, x, labels) == pytest.approx(0.8)


def test_agreement_with_several_heads_returns_one_rate_per_head_asked_for():
    model = net(3, {"shape": 3, "colour": 5})
    x = images(20, c=3, seed=4)
    predicted = model.predict(x)
    rates = metrics.agreement(model, x, {"colour": predicted["colour"]})
    assert rates == {"colour": 1.0}
    with pytest.raises(ValueError, match="give labels as"):
        metrics.agreement(model, x, predicted["shape"])
    with pytest.raises(ValueError, match="unknown head 'size'"):
        metrics.agreement(model, x, {"size": predicted["shape"]})
    with pytest.raises(ValueError, match=r"labels\['shape'\] must be a \(20,\) tensor"):
        metrics.agreement(model, x, {"shape": predicted["shape"][:5]})


# ---------------------------------------------------------------------------- memorisation

def test_nearest_neighbours_match_a_brute_force_search():
    queries, refs = images(7, seed=5), images(30, seed=6)
    distances, indices = metrics.nearest_neighbours(queries, refs, k=3, batch_size=4)
    for i in range(7):
        d = torch.tensor([(queries[i] - r).double().pow(2).sum().sqrt() for r in refs])
        order = d.argsort()[:3]
        assert torch.equal(indices[i], order)
        assert torch.allclose(distances[i], d[order])


def test_memorisation_flags_near_copies_of_training_images_and_not_new_images():
    train = images(200, seed=7)
    copies = train[:20] + 0.01 * images(20, seed=8)
    fresh = images(20, seed=9)
    assert metrics.memorisation(copies, train, n=20)[0] == 1.0
    fraction, ratio = metrics.memorisation(fresh, train, n=20)
    assert fraction == 0.0 and ratio.shape == (20,) and (ratio > 1).all()


def test_nearest_neighbours_reject_mismatched_shapes_and_bad_k():
    with pytest.raises(ValueError, match="same shape after the first dimension"):
        metrics.nearest_neighbours(images(2), images(3, size=8))
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\]"):
        metrics.nearest_neighbours(images(2), images(3), k=4)


# ---------------------------------------------------------------------------- the shipped classifiers

def test_shipped_digits_classifier_names_held_out_digits():
    model = pretrained.load("digits-classifier", device="cpu", train_if_missing=False)
    x, y = data.digits(16, split="test")
    assert metrics.agreement(model, x, y) >= 0.97


def test_shipped_shapes_classifier_reads_every_attribute_of_new_shapes_at_32_and_16_pixels():
    from minildm.recipes import shapes_labels

    model = pretrained.load("shapes-classifier", device="cpu", train_if_missing=False)
    for size in (32, 16):
        batch = data.shapes(300, size=size, shape_set=data.ALL_SHAPES, seed=11)
        rates = metrics.agreement(model, batch.images, shapes_labels(batch))
        assert min(rates.values()) >= 0.95, (size, rates)
