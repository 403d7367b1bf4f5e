"""The schedule explorer: it redraws when a control moves, shows what it claims, refuses bad input.

The widget is driven from Python the way the browser drives it (setting a control's value
fires the same observers); the picture is checked against the forward process computed
here from the closed form x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4)
with the cosine schedule written out independently (Nichol & Dhariwal 2021, eq. 17).
"""

import base64
import io
import math

import matplotlib.image
import numpy as np
import pytest
import torch

from minildm import widgets

T = 50


@pytest.fixture(scope="module")
def image():
    # a (3, 8, 8) image in [-1, 1] with structure: a bright square on a dark ramp
    x = torch.linspace(-1, 0, 8).repeat(3, 8, 1)  # (3, 8, 8)
    x[:, 2:6, 2:6] = torch.tensor([0.9, -0.5, 0.3])[:, None, None]
    return x


def pixels(png: bytes) -> np.ndarray:
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def shown_png(explorer) -> bytes:
    """The PNG the Output widget holds, i.e. what the browser's <img> shows."""
    (output,) = explorer.output.outputs
    assert output["output_type"] == "display_data"
    return base64.b64decode(output["data"]["image/png"])


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
