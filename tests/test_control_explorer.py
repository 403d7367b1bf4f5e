"""The control explorer: it samples once per setting, redraws on every move, shows real controlled samples.

A tiny untrained text-to-image LDM (tests/conftest.py: tiny_ldm) and a ControlNet copied from its
U-Net with every weight nudged (so its residuals are not zero) stand in for shapes-ldm and
shapes-controlnet-edges. The pictures are checked against ``ldm.sample`` called here directly with
the condition built by hand, and sampling is counted by wrapping ``ldm.sample``.
"""

import re

import numpy as np
import pytest
import torch

from explorer_png import as_drawn, count_samples, pixels, shown_png
from minildm import data, ldm, recipes, widgets
from minildm import control_explorer as explorer_module
from minildm.controlnet import ControlNet, MultiControlNet

PROMPT = "a large red square in the center on white"
FAST = {"n": 2, "steps": 3, "guidance_scale": 2.0, "seed": 1}


@pytest.fixture(scope="module")
def parts(make_tiny_ldm):
    net, vae, clip, schedule = make_tiny_ldm()
    controlnet = ControlNet.from_unet(net, condition_channels=1, factor=4)
    with torch.no_grad():  # as training leaves it: the zero convolutions are not zero any more
        for p in controlnet.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net, vae, clip, schedule, controlnet.eval()


@pytest.fixture(scope="module")
def targets():
    return data.shapes(3, size=32, n_objects=1, seed=4)


@pytest.fixture
def sample_calls(monkeypatch):
    """Counts calls of ldm.sample, the only way the explorer can sample."""
    return count_samples(monkeypatch, lambda args, kwargs: kwargs.get("control_scale"))


def direct(parts, target, prompt, condition, scale, *, n, steps, guidance_scale, seed, guess_mode=False):
    """ldm.sample called by hand with the condition repeated n times."""
    net, vae, clip, schedule, controlnet = parts
    control = {} if condition is None else {"control": controlnet, "condition": condition.repeat(n, 1, 1, 1),
                                            "control_scale": scale, "guess_mode": guess_mode}
    return ldm.sample(net, vae, clip, schedule, ["" if guess_mode else prompt] * n, steps=steps,
                      guidance_scale=guidance_scale, seed=seed, **control)


def test_the_widgets_module_re_exports_the_explorer():
    assert widgets.control_explorer is explorer_module.control_explorer
    assert widgets.ControlExplorer is explorer_module.ControlExplorer
    assert widgets.control_figure is explorer_module.control_figure


def test_explorer_shows_a_png_from_the_start_with_the_controls_a_browser_looks_for(parts, targets, sample_calls):
    explorer = explorer_module.control_explorer(*parts, targets, PROMPT, **FAST)
    assert explorer.prompt_box.description == "prompt" and explorer.prompt_box.value == PROMPT
    assert explorer.target_slider.description == "condition image"
    assert (explorer.target_slider.min, explorer.target_slider.max) == (0, 2)
    assert tuple(explorer.kind_buttons.options) == ("edges", "mask", "scribble", "none")
    assert explorer.scale_slider.description == "control scale" and explorer.scale_slider.value == 1.0
    assert explorer.seed_slider.description == "seed"
    assert explorer.guess_checkbox.description == "guess mode (no prompt)"
    png = shown_png(explorer)
    assert png.startswith(b"\x89PNG") and png == explorer.png
    assert explorer.renders == 1 and explorer.samplings == 1 and sample_calls == [1.0]


def test_each_condition_kind_feeds_what_it_names(targets):
    target = targets[0]
    assert torch.equal(explorer_module.condition_image(target, "edges"), target.edges)
    assert torch.equal(explorer_module.condition_image(target, "mask"), torch.where(target.masks > 0, 1.0, -1.0))
    assert torch.equal(explorer_module.condition_image(target, "scribble", seed=3), data.scribble(target.masks, 3))
    assert explorer_module.condition_image(target, "none") is None


@pytest.mark.parametrize("kind", ["edges", "mask", "scribble", "none"])
def test_the_samples_on_show_are_ldm_sample_with_that_condition(parts, targets, kind):
    explorer = explorer_module.control_explorer(*parts, targets, PROMPT, kind=kind, scale=0.8, **FAST)
    target = targets[0]
    condition = {"edges": target.edges, "mask": 2 * target.masks - 1, "scribble": data.scribble(target.masks, 1),
                 "none": None}[kind]
    want = direct(parts, target, PROMPT, condition, 0.8, **FAST)
    torch.testing.assert_close(explorer.samples.images, want)
    # the IoU in the titles is the judge's object masks against the target mask
    torch.testing.assert_close(explorer.samples.iou, recipes.mask_iou(want, target.masks.repeat(2, 1, 1, 1)))
    fig = explorer.figure()
    for k in range(2):
        np.testing.assert_allclose(fig.axes[1 + k].images[0].get_array(), as_drawn(want[k]), atol=1e-5)
        assert fig.axes[1 + k].get_title() == f"IoU {explorer.samples.iou[k]:.2f}"
    static = explorer_module.figure_png(explorer_module.samples_figure(explorer.samples), dpi=explorer_module.CONTROL_DPI)
    assert np.array_equal(pixels(shown_png(explorer)), pixels(static))


def test_scale_zero_shows_exactly_the_base_models_samples(parts, targets):
    explorer = explorer_module.control_explorer(*parts, targets, PROMPT, scale=0.0, **FAST)
    explorer.kind_buttons.value = "none"
    base = explorer.samples.images
    explorer.kind_buttons.value = "edges"
    assert torch.equal(explorer.samples.images, base)
    explorer.scale_slider.value = 1.0
    assert not torch.allclose(explorer.samples.images, base, atol=1e-3)


def test_every_control_resamples_once_and_a_setting_seen_before_comes_from_the_cache(parts, targets, sample_calls):
    explorer = explorer_module.control_explorer(*parts, targets, PROMPT, **FAST)
    before = shown_png(explorer)
    explorer.scale_slider.value = 0.5
    assert sample_calls[-1] == 0.5 and explorer.renders == 2
    explorer.kind_buttons.value = "scribble"
    explorer.target_slider.value = 2
    explorer.seed_slider.value = 5
    explorer.prompt_box.value = "a small blue circle in the top left on black"
    explorer.guess_checkbox.value = True
    assert len(sample_calls) == 7 and explorer.renders == 7 and explorer.samplings == 7
    assert explorer.samples.guess_mode and explorer.samples.colour is None
    assert shown_png(explorer) != before
    for control, value in ((explorer.guess_checkbox, False), (explorer.prompt_box, PROMPT), (explorer.seed_slider, 1),
                           (explorer.target_slider, 0), (explorer.kind_buttons, "edges"), (explorer.scale_slider, 1.0)):
        control.value = value  # back, one by one, through settings already sampled
    assert len(sample_calls) == 7 and explorer.renders == 13
    assert np.array_equal(pixels(shown_png(explorer)), pixels(before))


def test_guess_mode_samples_the_empty_prompt_with_only_the_conditional_branch_controlled(parts, targets):
    explorer = explorer_module.control_explorer(*parts, targets, PROMPT, **FAST)
    explorer.guess_checkbox.value = True
    want = direct(parts, targets[0], PROMPT, targets[0].edges, 1.0, guess_mode=True, **FAST)
    torch.testing.assert_close(explorer.samples.images, want)
    assert "guess mode" in explorer.readout.value


def test_the_static_figure_has_one_row_per_scale_with_the_same_noise(parts, targets):
    fig = explorer_module.control_figure(*parts, targets[1], PROMPT, scales=[0.0, 1.0], **FAST)
    assert len(fig.axes) == 2 * 3
    base = direct(parts, targets[1], PROMPT, None, 0.0, **FAST)
    steered = direct(parts, targets[1], PROMPT, targets[1].edges, 1.0, **FAST)
    for r, images in enumerate((base, steered)):
        assert fig.axes[3 * r].get_ylabel().startswith(f"scale {[0, 1][r]}")
        for k in range(2):
            np.testing.assert_allclose(fig.axes[3 * r + 1 + k].images[0].get_array(), as_drawn(images[k]), atol=1e-5)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), (targets[1].edges[0, 0] + 1).numpy() / 2)
    assert PROMPT in fig._suptitle.get_text()


@pytest.mark.parametrize("change, error, words", [
    ({"kind": "depth"}, ValueError, "unknown condition kind 'depth'"),
    ({"scale": -0.5}, ValueError, "scale must be >= 0"),
    ({"scale": 3.0}, ValueError, "scale must lie in [0, max_scale=2]"),
    ({"seed": 100}, ValueError, "seed must be in [0, 99]"),
    ({"n": 0}, ValueError, "n must be >= 1"),
    ({"steps": 101}, ValueError, "steps must be in [1, 100]"),
])
def test_the_explorer_refuses_bad_settings_clearly(parts, targets, change, error, words):
    with pytest.raises(error, match=re.escape(words)):
        explorer_module.control_explorer(*parts, targets, PROMPT, **(FAST | change))


def test_parts_that_do_not_fit_are_refused(parts, targets):
    net, vae, clip, schedule, controlnet = parts
    with pytest.raises(TypeError, match="controlnet must be a minildm ControlNet"):
        explorer_module.control_explorer(net, vae, clip, schedule, net, targets)
    with pytest.raises(ValueError, match="one one-channel condition"):
        explorer_module.control_explorer(net, vae, clip, schedule, MultiControlNet([controlnet]), targets)
    with pytest.raises(TypeError, match="targets must be a non-empty data.ShapesBatch"):
        explorer_module.control_explorer(net, vae, clip, schedule, controlnet, targets.edges)
    with pytest.raises(ValueError, match="scales must be a non-empty list"):
        explorer_module.control_figure(net, vae, clip, schedule, controlnet, targets, scales=[])
