"""The explorers: they redraw when a control moves, show what they claim, refuse bad input.

The widgets are driven from Python the way the browser drives them (setting a control's value
fires the same observers). The schedule explorer's picture is checked against the forward
process computed here from the closed form x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et
al. 2020, eq. 4) with the cosine schedule written out independently (Nichol & Dhariwal 2021,
eq. 17). The guidance explorer runs a tiny untrained class-conditional U-Net and classifier;
its samples are redrawn here with ``samplers.sample`` and its readouts recomputed from the
classifier's own predictions and features.
"""

import math
import re

import numpy as np
import pytest
import torch

from explorer_png import pixels, shown_png
from minildm import samplers, schedules, widgets
from minildm.classifier import Classifier
from minildm.unet import UNet

T = 50


@pytest.fixture(scope="module")
def image():
    # a (3, 8, 8) image in [-1, 1] with structure: a bright square on a dark ramp
    x = torch.linspace(-1, 0, 8).repeat(3, 8, 1)  # (3, 8, 8)
    x[:, 2:6, 2:6] = torch.tensor([0.9, -0.5, 0.3])[:, None, None]
    return x


def cosine_alpha_bar(T, s=0.008):
    f = [math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    betas = [min(1 - f[t + 1] / f[t], 0.999) for t in range(T)]
    return np.cumprod([1 - b for b in betas])


def test_explorer_shows_a_png_in_its_output_from_the_start(image):
    explorer = widgets.schedule_explorer(image, T=T, t=10)
    png = shown_png(explorer)
    assert png.startswith(b"\x89PNG") and png == explorer.png
    assert explorer.renders == 1


def test_moving_the_t_slider_redraws_once_with_a_new_picture(image):
    explorer = widgets.schedule_explorer(image, T=T, t=10)
    before, renders = shown_png(explorer), explorer.renders
    explorer.t_slider.value = 30
    after = shown_png(explorer)
    assert explorer.renders == renders + 1
    assert after != before
    assert pixels(after).shape == pixels(before).shape
    assert not np.array_equal(pixels(after), pixels(before))


def test_switching_the_schedule_changes_the_picture(image):
    explorer = widgets.schedule_explorer(image, T=T, t=25, schedules=("linear", "cosine"))
    before = shown_png(explorer)
    explorer.schedule_dropdown.value = "cosine"
    assert explorer.renders == 2
    assert not np.array_equal(pixels(shown_png(explorer)), pixels(before))
    assert explorer.figure()._suptitle.get_text().startswith("cosine")


def test_widget_shows_exactly_the_static_figure(image):
    explorer = widgets.schedule_explorer(image, T=T, t=12, schedules=("sigmoid", "linear"), seed=3)
    static = widgets.figure_png(widgets.schedule_figure(image, "sigmoid", T=T, t=12, seed=3))
    assert np.array_equal(pixels(shown_png(explorer)), pixels(static))


def test_changing_T_keeps_t_at_the_same_fraction_and_redraws_once(image):
    explorer = widgets.schedule_explorer(image, T=1000, t=500)
    renders = explorer.renders
    explorer.T_dropdown.value = 100
    # t' = round(t (T' - 1) / (T - 1)) = round(500 * 99 / 999) = 50
    assert (explorer.t_slider.value, explorer.t_slider.max) == (50, 99)
    assert explorer.renders == renders + 1
    explorer.T_dropdown.value = 1000
    assert (explorer.t_slider.value, explorer.t_slider.max) == (round(50 * 999 / 99), 999)
    assert explorer.renders == renders + 2


def test_static_figure_draws_x0_the_noised_neighbours_and_both_curves(image):
    t, seed = 20, 5
    fig = widgets.schedule_figure(image, "cosine", T=T, t=t, seed=seed)
    step = T // 20
    image_axes, curve_axes = fig.axes[:6], fig.axes[6:]
    titles = [ax.get_title() for ax in image_axes]
    assert titles == ["x0 (clean)"] + [f"t = {t + k * step}" for k in (-2, -1, 0, 1, 2)]
    assert image_axes[3].title.get_color() == "red"
    assert [ax.get_title() for ax in curve_axes] == ["alpha_bar (cosine)", "log-SNR (cosine)"]
    assert all(ax.get_xlabel() == "timestep t" for ax in curve_axes)

    # the panel at t is the closed form with the seeded noise
    alpha_bar = cosine_alpha_bar(T)
    eps = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed))
    x_t = math.sqrt(alpha_bar[t]) * image + math.sqrt(1 - alpha_bar[t]) * eps
    expected = ((x_t.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(image_axes[3].images[0].get_array(), expected, atol=1e-5)

    # the alpha_bar curve and its marker at t
    curve, marker = curve_axes[0].lines[0], curve_axes[0].lines[-1]
    np.testing.assert_allclose(curve.get_ydata(), alpha_bar, rtol=1e-6)
    np.testing.assert_allclose(marker.get_xydata(), [[t, alpha_bar[t]]], rtol=1e-6)
    log_snr = curve_axes[1].lines[0].get_ydata()
    np.testing.assert_allclose(log_snr, np.log(alpha_bar / (1 - alpha_bar)), rtol=1e-6)


def test_neighbours_stop_at_the_ends_of_the_process(image):
    fig = widgets.schedule_figure(image, "linear", T=T, t=0)
    shown = [ax.get_title() for ax in fig.axes[:6] if ax.get_visible() and ax.axison]
    assert shown == ["x0 (clean)", "t = 0", "t = 2", "t = 4"]


def test_zero_terminal_snr_ends_at_alpha_bar_zero_and_leaves_minus_infinity_off_the_curve(image):
    explorer = widgets.schedule_explorer(image, T=T, t=T - 1, schedules=("scaled_linear",))
    explorer.zero_snr_checkbox.value = True
    assert explorer.renders == 2
    fig = explorer.figure()
    alpha_bar = fig.axes[6].lines[0].get_ydata()
    assert alpha_bar[-1] == 0 and alpha_bar[0] > 0.99
    log_snr = fig.axes[7].lines[0].get_ydata()
    assert len(log_snr) == T - 1 and np.isfinite(log_snr).all()


def test_a_one_channel_image_is_drawn_in_gray():
    digit = torch.rand(1, 1, 8, 8) * 2 - 1  # (1, C, H, W) is accepted too
    fig = widgets.schedule_figure(digit, "cosine", T=T, t=5)
    shown = fig.axes[0].images[0]
    assert shown.get_array().shape == (8, 8) and shown.get_cmap().name == "gray"


@pytest.mark.parametrize("kwargs, error, words", [
    ({"schedule": "quadratic"}, ValueError, "unknown schedule 'quadratic'; choose from"),
    ({"t": T}, ValueError, f"t must lie in [0, {T - 1}]"),
    ({"t": -1}, ValueError, f"t must lie in [0, {T - 1}]"),
    ({"t": 2.5}, TypeError, "t must be an int"),
    ({"T": 1, "t": 0}, ValueError, "T must be at least 2"),
])
def test_static_figure_rejects_bad_settings(image, kwargs, error, words):
    settings = {"schedule": "cosine", "T": T, "t": 10} | kwargs
    with pytest.raises(error, match=words.replace("[", r"\[").replace("(", r"\(")):
        widgets.schedule_figure(image, **settings)


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((3, 8, 8)), TypeError, "image must be a torch.Tensor"),
    (torch.zeros(2, 8, 8), ValueError, "C = 1 or 3"),
    (torch.zeros(2, 3, 8, 8), ValueError, "got (2, 3, 8, 8)"),
])
def test_bad_images_are_refused(bad, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        widgets.schedule_figure(bad, "cosine", T=T, t=1)


def test_explorer_rejects_unknown_schedules_and_out_of_range_t(image):
    with pytest.raises(ValueError, match="unknown schedule 'cosyne'"):
        widgets.schedule_explorer(image, T=T, schedules=("linear", "cosyne"))
    with pytest.raises(ValueError, match="schedules must be a non-empty list"):
        widgets.schedule_explorer(image, T=T, schedules="cosine")
    with pytest.raises(ValueError, match=r"t must lie in \[0, 49\]"):
        widgets.schedule_explorer(image, T=T, t=50)


# ---------------------------------------------------------------------------- guidance explorer

K = 3  # classes of the tiny model; K is its null class
TINY = {"schedule": "cosine", "T": 50, "in_channels": 1, "size": 8, "num_classes": K}
FAST = {"config": TINY, "n_per_class": 3, "steps": 4}


@pytest.fixture(scope="module")
def pair():
    """An untrained class-conditional U-Net on 8x8 images and an untrained 3-class classifier."""
    torch.manual_seed(0)
    model = UNet(in_channels=1, base=8, mults=(1, 2), attn_levels=(), num_res_blocks=1, num_classes=K).eval()
    classifier = Classifier(in_channels=1, heads={"digit": K}, image_size=8, width=8, feature_dim=16).eval()
    return model, classifier


def guided_by_hand(model, scale, labels, steps, seed):
    """DDIM samples with eps = eps_u + s (eps_c - eps_u), the null class K as the unconditional input."""
    schedule = schedules.NoiseSchedule(schedules.make_betas("cosine", TINY["T"]))
    return samplers.sample(model, schedule, (len(labels), 1, 8, 8), sampler="ddim", steps=steps,
                           generator=torch.Generator().manual_seed(seed), model_kwargs={"y": labels},
                           guidance_scale=scale, uncond_kwargs={"y": torch.full_like(labels, K)}).clamp(-1, 1)


def mean_pairwise_distance_per_class(features, labels):
    per_class = []
    for c in sorted(set(labels.tolist())):
        f = features[labels == c].double()
        pairs = [(f[i] - f[j]).norm() for i in range(len(f)) for j in range(i + 1, len(f))]
        per_class.append(sum(pairs) / len(pairs))
    return float(sum(per_class) / len(per_class))


@pytest.mark.parametrize("scale", [0.0, 1.0, 2.5])
def test_guidance_samples_are_cfg_samples_and_their_readouts_are_the_classifiers(pair, scale):
    model, classifier = pair
    got = widgets.guidance_samples(model, classifier, scale, classes=[2, 0], seed=3, **FAST)
    labels = torch.tensor([2, 2, 2, 0, 0, 0])
    assert torch.equal(got.labels, labels)
    # s = 0 and s = 1 take one model call per step, which cfg gives up to rounding
    expected = guided_by_hand(model, scale, labels, steps=4, seed=3)
    torch.testing.assert_close(got.images, expected, atol=1e-5, rtol=1e-5)
    predicted = classifier.predict(got.images)["digit"]
    assert torch.equal(got.predicted, predicted)
    assert got.agreement == pytest.approx((predicted == labels).double().mean().item())
    with torch.no_grad():
        features = classifier.features(got.images)
    assert got.diversity == pytest.approx(mean_pairwise_distance_per_class(features, labels), rel=1e-6)


def test_guidance_changes_the_samples_and_the_seed_changes_the_noise(pair):
    model, classifier = pair
    base = widgets.guidance_samples(model, classifier, 1.0, **FAST)
    guided = widgets.guidance_samples(model, classifier, 4.0, **FAST)
    reseeded = widgets.guidance_samples(model, classifier, 1.0, seed=1, **FAST)
    assert not torch.allclose(base.images, guided.images, atol=1e-3)
    assert not torch.allclose(base.images, reseeded.images, atol=1e-3)


def test_clipping_x0_hat_is_passed_to_the_sampler(pair):
    model, classifier = pair
    clipped = widgets.guidance_samples(model, classifier, 6.0, clip=1.0, **FAST)
    free = widgets.guidance_samples(model, classifier, 6.0, **FAST)
    schedule = schedules.NoiseSchedule(schedules.make_betas("cosine", TINY["T"]))
    labels = free.labels
    expected = samplers.sample(model, schedule, (len(labels), 1, 8, 8), sampler="ddim", steps=4, clip=1.0,
                               generator=torch.Generator().manual_seed(0), model_kwargs={"y": labels},
                               guidance_scale=6.0, uncond_kwargs={"y": torch.full_like(labels, K)}).clamp(-1, 1)
    torch.testing.assert_close(clipped.images, expected)
    assert clipped.clip == 1.0 and free.clip is None
    assert not torch.allclose(clipped.images, free.images, atol=1e-3)


def test_feature_diversity_is_the_mean_pairwise_distance_within_each_class_averaged_over_classes():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    # class 0: |(3, 4)| = 5; class 1: (1 + 3 + 2) / 3 = 2; mean over classes (3.5), not over pairs (2.75)
    assert widgets.feature_diversity(features, labels) == pytest.approx(3.5)
    assert widgets.feature_diversity(torch.ones(4, 3), torch.tensor([0, 0, 1, 1])) == 0
    with pytest.raises(ValueError, match="class 1 has 1 sample; diversity needs at least 2"):
        widgets.feature_diversity(features[:3], labels[:3])
    with pytest.raises(ValueError, match=r"labels must be a \(5,\) tensor"):
        widgets.feature_diversity(features, labels[:4])


def test_guidance_figure_draws_one_panel_per_scale_and_frames_every_disagreement(pair):
    model, classifier = pair
    scales = (0.0, 1.0, 3.0)
    fig = widgets.guidance_figure(model, classifier, scales, **FAST)
    assert len(fig.axes) == len(scales)
    for ax, s in zip(fig.axes, scales):
        r = widgets.guidance_samples(model, classifier, s, **FAST)
        assert ax.get_title() == (f"s = {s:g} (w = {s - 1:g})\nagreement {r.agreement:.2f}, "
                                  f"diversity {r.diversity:.2f}")
        misses = int((r.predicted != r.labels).sum())
        assert len(ax.patches) == misses
        hits = (r.predicted == r.labels).view(K, 3).sum(1).tolist()
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{c}: {k}/3" for c, k in enumerate(hits)]
        # the tiled picture: K rows and 3 columns of 8x8 samples with 1-pixel gaps
        assert ax.images[0].get_array().shape == (K * 9 + 1, 3 * 9 + 1, 3)
    assert "w = s - 1" in fig._suptitle.get_text()


def test_guidance_explorer_sliders_have_the_names_a_browser_test_looks_for(pair):
    explorer = widgets.guidance_explorer(*pair, **FAST)
    assert explorer.scale_slider.description == "guidance scale"
    assert explorer.seed_slider.description == "seed"
    png = shown_png(explorer)
    assert png.startswith(b"\x89PNG") and png == explorer.png and explorer.renders == 1


def test_moving_the_scale_slider_redraws_once_with_new_samples_and_readouts(pair):
    model, classifier = pair
    explorer = widgets.guidance_explorer(model, classifier, scale=1.0, **FAST)
    before, renders = shown_png(explorer), explorer.renders
    explorer.scale_slider.value = 5.0
    assert explorer.renders == renders + 1
    assert explorer.samples.scale == 5.0
    after = shown_png(explorer)
    assert after != before and not np.array_equal(pixels(after), pixels(before))
    # the readouts are those of an independent draw at s = 5
    labels = torch.arange(K).repeat_interleave(3)
    images = guided_by_hand(model, 5.0, labels, steps=4, seed=0)
    torch.testing.assert_close(explorer.samples.images, images, atol=1e-5, rtol=1e-5)
    predicted = classifier.predict(explorer.samples.images)["digit"]
    assert explorer.agreement == pytest.approx((predicted == labels).double().mean().item())
    with torch.no_grad():
        features = classifier.features(explorer.samples.images)
    assert explorer.diversity == pytest.approx(mean_pairwise_distance_per_class(features, labels), rel=1e-6)
    assert f"agreement <b>{explorer.agreement:.2f}</b>" in explorer.readout.value
    assert "w = s - 1 = 4" in explorer.readout.value


def test_the_seed_slider_and_the_clip_box_redraw(pair):
    explorer = widgets.guidance_explorer(*pair, **FAST)
    first = explorer.samples.images
    explorer.seed_slider.value = 7
    assert explorer.renders == 2 and explorer.samples.seed == 7
    assert not torch.allclose(explorer.samples.images, first)
    explorer.clip_checkbox.value = True
    assert explorer.renders == 3 and explorer.samples.clip == 1.0


def test_guidance_explorer_shows_exactly_the_static_figure(pair):
    explorer = widgets.guidance_explorer(*pair, scale=2.0, seed=4, classes=[1, 2], **FAST)
    static = widgets.figure_png(widgets.guidance_figure(*pair, (2.0,), seed=4, classes=[1, 2], **FAST),
                                dpi=widgets.GUIDANCE_DPI)
    assert np.array_equal(pixels(shown_png(explorer)), pixels(static))


@pytest.mark.parametrize("change, error, words", [
    ({"config": {"schedule": "cosine", "T": 50}}, ValueError, "missing ['in_channels', 'size', 'num_classes']"),
    ({"config": "digits"}, TypeError, "config must be a dict like recipes.DIGITS_CONFIG"),
    ({"config": {**TINY, "num_classes": 10}}, ValueError, "model has num_classes=3 but config says num_classes=10"),
    ({"classes": [0, 3]}, ValueError, "class indices in [0, 2] (the null class 3 is not one)"),
    ({"classes": [1, 1]}, ValueError, "classes must not repeat a class"),
    ({"classes": []}, ValueError, "classes must be a non-empty list"),
    ({"n_per_class": 1}, ValueError, "n_per_class must be >= 2"),
    ({"steps": 51}, ValueError, "steps must be in [1, 50]"),
    ({"steps": 2.0}, TypeError, "steps must be an int"),
    ({"scale": -1.0}, ValueError, "scale must be >= 0"),
    ({"scale": float("nan")}, TypeError, "scale must be a finite number"),
    ({"clip": 0}, ValueError, "clip must be a positive number or None"),
])
def test_guidance_samples_refuses_bad_arguments_clearly(pair, change, error, words):
    settings = {"scale": 2.0, **FAST} | change
    with pytest.raises(error, match=re.escape(words)):
        widgets.guidance_samples(*pair, **settings)


def test_a_classifier_over_other_classes_or_channels_is_refused(pair):
    model, _ = pair
    with pytest.raises(ValueError, match=re.escape("one head over the model's 3 classes, got heads {'digit': 10}")):
        widgets.guidance_samples(model, Classifier(1, {"digit": 10}, image_size=8, width=8, feature_dim=16), 1.0,
                                 **FAST)
    with pytest.raises(ValueError, match="classifier reads 3-channel images but the model draws 1"):
        widgets.guidance_samples(model, Classifier(3, {"digit": 3}, image_size=8, width=8, feature_dim=16), 1.0,
                                 **FAST)
    with pytest.raises(TypeError, match="classifier must be a minildm.classifier.Classifier"):
        widgets.guidance_samples(model, lambda x: x, 1.0, **FAST)


def test_guidance_explorer_refuses_settings_off_its_sliders(pair):
    with pytest.raises(ValueError, match=re.escape("scale must lie in [0, max_scale=4]")):
        widgets.guidance_explorer(*pair, scale=5.0, max_scale=4.0, **FAST)
    with pytest.raises(ValueError, match=re.escape("seed must be in [0, 99]")):
        widgets.guidance_explorer(*pair, seed=100, **FAST)
    with pytest.raises(ValueError, match="scales must be a non-empty list"):
        widgets.guidance_figure(*pair, 2.0, **FAST)
