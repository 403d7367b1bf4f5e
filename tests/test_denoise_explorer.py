"""The denoise explorer: it samples once per setting, redraws on every move, shows the real trajectory.

The explorer runs a tiny untrained text-to-image LDM (tests/conftest.py: tiny_ldm). Its
pictures are checked against a trajectory captured here independently: ``ldm.sample`` with a
callback keeping z_t and z0_hat at each step, decoded by hand as D(z / s) (Rombach et al.
2022). Sampling is counted by wrapping ``ldm.sample``, so "moving the scrubber does not
resample" is measured, not taken from the explorer's own counter.
"""

import math
import re

import numpy as np
import pytest
import torch

from explorer_png import as_drawn, count_samples, pixels, shown_png
from minildm import ldm, schedules, unet
from minildm import denoise_explorer as explorer_module

PROMPTS = ("a small red circle in the top left on white", "a large blue square in the center on black")
STEPS = 5
FAST = {"steps": STEPS, "guidance_scale": 2.0, "seed": 1}


@pytest.fixture(scope="module")
def parts(make_tiny_ldm):
    net, vae, clip, schedule = make_tiny_ldm()
    return net, vae, clip, schedule


@pytest.fixture
def sample_calls(monkeypatch):
    """Counts calls of ldm.sample, the only way the explorer can sample."""
    return count_samples(monkeypatch, lambda args, kwargs: kwargs.get("guidance_scale"))


def captured_trajectory(parts, prompts, *, steps, guidance_scale, seed):
    """An independent run: ldm.sample with a callback, every latent decoded by hand as D(z / s)."""
    net, vae, clip, schedule = parts
    seen = []
    images = ldm.sample(net, vae, clip, schedule, list(prompts), steps=steps, guidance_scale=guidance_scale,
                        seed=seed, callback=lambda i, t, z, z0: seen.append((t, z.clone(), z0.clone())))
    with torch.no_grad():
        def decode(z):
            return vae.decode(z / vae.scale_factor).clamp(-1, 1)
        x_t = torch.stack([decode(z) for _, z, _ in seen])  # (steps, P, 3, 32, 32)
        x0_hat = torch.stack([decode(z0) for _, _, z0 in seen])
    return [t for t, _, _ in seen], x_t, x0_hat, images


def test_explorer_shows_a_png_from_the_start_with_the_controls_a_browser_looks_for(parts, sample_calls):
    explorer = explorer_module.denoise_explorer(*parts, PROMPTS, **FAST)
    assert [box.description for box in explorer.prompt_boxes] == ["prompt 1", "prompt 2"]
    assert explorer.prompts == PROMPTS
    assert explorer.step_slider.description == "step"
    assert (explorer.step_slider.min, explorer.step_slider.max, explorer.step_slider.value) == (0, STEPS - 1, 2)
    assert explorer.scale_slider.description == "guidance scale"
    assert explorer.seed_slider.description == "seed"
    png = shown_png(explorer)
    assert png.startswith(b"\x89PNG") and png == explorer.png
    assert explorer.renders == 1 and explorer.samplings == 1 and len(sample_calls) == 1


def test_moving_the_scrubber_redraws_once_with_a_new_picture_and_does_not_resample(parts, sample_calls):
    explorer = explorer_module.denoise_explorer(*parts, PROMPTS, step=0, **FAST)
    before, renders = shown_png(explorer), explorer.renders
    for step in (1, 4, 0):
        explorer.step_slider.value = step
        assert explorer.renders == renders + 1
        renders = explorer.renders
    explorer.step_slider.value = 3
    after = shown_png(explorer)
    assert after != before and pixels(after).shape == pixels(before).shape
    assert not np.array_equal(pixels(after), pixels(before))
    assert len(sample_calls) == 1 and explorer.samplings == 1


def test_a_new_prompt_guidance_or_seed_resamples_once_and_a_setting_seen_before_does_not(parts, sample_calls):
    explorer = explorer_module.denoise_explorer(*parts, PROMPTS, **FAST)
    first = explorer.trajectory.images
    explorer.prompt_boxes[1].value = "a large green triangle in the bottom right on white"
    assert len(sample_calls) == 2 and explorer.renders == 2
    assert torch.allclose(explorer.trajectory.images[0], first[0])  # the same noise and prompt: prompt 1 unchanged
    assert not torch.allclose(explorer.trajectory.images[1], first[1], atol=1e-3)
    explorer.scale_slider.value = 4.0
    assert sample_calls[-1] == 4.0 and len(sample_calls) == 3 and explorer.renders == 3
    explorer.seed_slider.value = 7
    assert len(sample_calls) == 4 and explorer.trajectory.seed == 7
    explorer.seed_slider.value = 1  # back to a (prompts, scale, seed) already sampled: from the cache
    assert len(sample_calls) == 4 and explorer.renders == 5
    assert explorer.samplings == 4


def test_the_images_on_show_are_an_independent_ldm_sample_trajectory_decoded(parts):
    step = 3
    explorer = explorer_module.denoise_explorer(*parts, PROMPTS, step=step, **FAST)
    ts, x_t, x0_hat, images = captured_trajectory(parts, PROMPTS, **FAST)
    trajectory = explorer.trajectory
    assert list(trajectory.ts) == ts
    torch.testing.assert_close(trajectory.x_t, x_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trajectory.x0_hat, x0_hat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trajectory.images, images)
    # the panels: x_t of both prompts above their x0_hat, at the scrubbed step
    panels = [ax.images[0].get_array() for ax in explorer.figure().axes[:4]]
    for panel, image in zip(panels, [x_t[step, 0], x_t[step, 1], x0_hat[step, 0], x0_hat[step, 1]]):
        np.testing.assert_allclose(panel, as_drawn(image), atol=1e-5)
    # and the PNG in the Output is that figure
    static = explorer_module.figure_png(explorer_module.step_figure(trajectory, step), dpi=explorer_module.DENOISE_DPI)
    assert np.array_equal(pixels(shown_png(explorer)), pixels(static))


def test_the_last_x0_hat_is_the_sample_and_the_readout_names_the_step(parts):
    explorer = explorer_module.denoise_explorer(*parts, PROMPTS, step=STEPS - 1, **FAST)
    trajectory = explorer.trajectory
    # DDIM (eta 0) ends with alpha_bar_prev = 1: the last step's z0_hat is the latent that is decoded
    torch.testing.assert_close(trajectory.x0_hat[-1], trajectory.images)
    abar = schedules.make_betas("cosine", 100)  # independent of the schedule object the explorer holds
    alpha_bar = torch.cumprod(1 - abar, 0)[trajectory.ts[-1]].item()
    assert f"step <b>{STEPS}</b> of {STEPS}: t = {trajectory.ts[-1]}" in explorer.readout.value
    assert f"{math.sqrt(alpha_bar):.2f} z_0 + {math.sqrt(1 - alpha_bar):.2f} eps" in explorer.readout.value


def test_the_static_figure_rows_are_prompts_by_xt_and_x0_hat_and_columns_spread_steps(parts):
    steps = 7
    fig = explorer_module.denoise_figure(*parts, PROMPTS, steps=steps, guidance_scale=2.0, seed=1, columns=4)
    ts, x_t, x0_hat, _ = captured_trajectory(parts, PROMPTS, steps=steps, guidance_scale=2.0, seed=1)
    shown = [0, 2, 4, 6]  # 4 columns from the first step to the last, evenly
    assert len(fig.axes) == 4 * len(shown)
    assert [ax.get_title() for ax in fig.axes[:4]] == [f"step {i + 1}, t = {ts[i]}" for i in shown]
    rows = [x_t[:, 0], x0_hat[:, 0], x_t[:, 1], x0_hat[:, 1]]  # prompt 1 x_t, prompt 1 x0_hat, prompt 2 ...
    for r, row in enumerate(rows):
        for c, i in enumerate(shown):
            np.testing.assert_allclose(fig.axes[r * len(shown) + c].images[0].get_array(), as_drawn(row[i]),
                                       atol=1e-5)
    assert [fig.axes[r * len(shown)].get_ylabel() for r in range(4)] == [
        "prompt 1\n$x_t$", "prompt 1\n$\\hat x_0$", "prompt 2\n$x_t$", "prompt 2\n$\\hat x_0$"]
    assert all(p in fig._suptitle.get_text() for p in PROMPTS)


@pytest.mark.parametrize("change, error, words", [
    ({"prompts": "a red circle"}, ValueError, "prompts must be two strings"),
    ({"prompts": PROMPTS + ("a third",)}, ValueError, "prompts must be two strings"),
    ({"prompts": ("a red circle", 3)}, ValueError, "prompts must be two strings"),
    ({"steps": 0}, ValueError, "steps must be in [1, 100]"),
    ({"steps": 101}, ValueError, "steps must be in [1, 100]"),
    ({"steps": 2.0}, TypeError, "steps must be an int"),
    ({"guidance_scale": -1.0}, ValueError, "guidance_scale must be >= 0"),
    ({"guidance_scale": float("nan")}, TypeError, "guidance_scale must be a finite number"),
    ({"guidance_scale": 12.0}, ValueError, "guidance_scale must lie in [0, max_scale=10]"),
    ({"seed": 100}, ValueError, "seed must be in [0, 99]"),
    ({"step": STEPS}, ValueError, f"step must be in [0, {STEPS - 1}]"),
])
def test_the_explorer_refuses_bad_settings_clearly(parts, change, error, words):
    settings = {"prompts": PROMPTS, **FAST} | change
    with pytest.raises(error, match=re.escape(words)):
        explorer_module.denoise_explorer(*parts, **settings)


def test_parts_that_do_not_fit_together_are_refused(parts):
    net, vae, clip, schedule = parts
    torch.manual_seed(0)
    concat_net = unet.UNet(in_channels=4 + 3, out_channels=4, base=8, mults=(1, 2), attn_levels=(1,), context_dim=16)
    wide_net = unet.UNet(in_channels=4, base=8, mults=(1, 2), attn_levels=(1,), context_dim=32)
    cases = [
        ((concat_net, vae, clip, schedule), ValueError, "unet reads 7 input channels but vae's latents have 4"),
        ((wide_net, vae, clip, schedule), ValueError, "context_dim=32 features but clip's text width is 16"),
        ((net, clip, clip, schedule), TypeError, "vae must be a minildm.autoencoders.Autoencoder"),
        ((net, vae, vae, schedule), TypeError, "clip must be a minildm.text.MiniCLIP"),
        ((net, vae, clip, "cosine"), TypeError, "schedule must be the NoiseSchedule"),
        ((lambda x, t: x, vae, clip, schedule), TypeError, "unet must be the LDM's eps-model"),
    ]
    for four, error, words in cases:
        with pytest.raises(error, match=re.escape(words)):
            explorer_module.denoise_explorer(*four, PROMPTS, **FAST)
        with pytest.raises(error, match=re.escape(words)):
            explorer_module.denoise_figure(*four, PROMPTS, **FAST)


def test_the_figures_refuse_what_is_not_a_trajectory_or_a_step_on_it(parts):
    trajectory = explorer_module.denoise_trajectory(*parts, PROMPTS, **FAST)
    with pytest.raises(ValueError, match=re.escape(f"step must be in [0, {STEPS - 1}]")):
        explorer_module.step_figure(trajectory, STEPS)
    with pytest.raises(ValueError, match=re.escape(f"columns must be in [1, {STEPS}]")):
        explorer_module.trajectory_figure(trajectory, STEPS + 1)
    with pytest.raises(TypeError, match="trajectory must be a DenoiseTrajectory"):
        explorer_module.step_figure(trajectory.x_t, 0)
    with pytest.raises(ValueError, match="prompts must be a non-empty list of strings"):
        explorer_module.denoise_trajectory(*parts, "a red circle", **FAST)
