"""The LoRA explorer: the LoRA scale and the rank change the picture, and nothing else does.

The explorer runs tiny untrained text-to-image LDMs (the parts of tests/test_denoise_explorer.py)
with adapters of rank 1 and 2 whose B is random (a "trained" adapter, so the scale matters). Its
samples are checked against independent ones: at scale 0 the U-Net with its LoRA layers removed
(the pretrained model), at scale s a plain copy whose weights are W + s (alpha / r) B A, written
out by hand (Hu et al. 2021, eq. 3). Sampling is counted by wrapping ``ldm.sample``.
"""

import copy
import io
import re

import matplotlib.image
import numpy as np
import pytest
import torch

from explorer_png import as_drawn, count_samples, shown_png
from minildm import ldm, lora, unet
from minildm import lora_explorer as explorer_module

PROMPT = "a small red star in the top left on white"
FAST = {"steps": 4, "guidance_scale": 2.0, "seed": 1}
ALPHA = 2.0


@pytest.fixture(scope="module")
def parts(make_tiny_ldm):
    net, vae, clip, schedule = make_tiny_ldm()
    return net, vae, clip, schedule


def adapted(net, r, seed):
    """A copy of ``net`` with LoRA of rank r on its attention projections and a random (non-zero) B."""
    model = copy.deepcopy(net)
    lora.inject(model, r=r, alpha=ALPHA)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def adapters(parts):
    return {1: adapted(parts[0], 1, seed=1), 2: adapted(parts[0], 2, seed=2)}


def by_hand(model, scale):
    """A plain U-Net (no LoRA layers) whose weights are W + scale (alpha / r) B A, computed here."""
    plain = copy.deepcopy(model)
    for name, m in list(plain.named_modules()):
        if isinstance(m, lora.LoRALinear):
            with torch.no_grad():
                m.base_layer.weight += scale * ALPHA / m.r * m.lora_B.weight @ m.lora_A.weight
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, m.base_layer)
    assert not any(isinstance(m, lora.LoRALinear) for m in plain.modules())
    return plain


def independent_sample(parts, model, scale, prompt=PROMPT, *, steps, guidance_scale, seed):
    _, vae, clip, schedule = parts
    return ldm.sample(by_hand(model, scale), vae, clip, schedule, [prompt], steps=steps,
                      guidance_scale=guidance_scale, seed=seed)[0]


@pytest.fixture
def sample_calls(monkeypatch):
    return count_samples(monkeypatch, lambda args, kwargs: args[4])


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 1.5])
def test_a_sample_at_scale_s_is_the_model_with_w_plus_s_alpha_over_r_b_a(parts, adapters, scale):
    _, vae, clip, schedule = parts
    model = adapters[2]
    ours = explorer_module.lora_sample(model, vae, clip, schedule, PROMPT, scale, **FAST)
    torch.testing.assert_close(ours, independent_sample(parts, model, scale, **FAST), atol=1e-5, rtol=1e-5)


def test_scale_zero_is_the_pretrained_model_and_the_scale_is_put_back(parts, adapters):
    net, vae, clip, schedule = parts
    model = adapters[1]
    lora.set_scale(model, 0.7)
    base = explorer_module.lora_sample(model, vae, clip, schedule, PROMPT, 0.0, **FAST)
    torch.testing.assert_close(base, ldm.sample(net, vae, clip, schedule, [PROMPT], **FAST)[0], atol=1e-6, rtol=0)
    assert all(m.scaling == pytest.approx(0.7 * ALPHA / 1) for m in model.modules() if isinstance(m, lora.LoRALinear))
    lora.set_scale(model, 1.0)


def test_the_scale_changes_the_picture(parts, adapters):
    _, vae, clip, schedule = parts
    images = [explorer_module.lora_sample(adapters[2], vae, clip, schedule, PROMPT, s, **FAST) for s in (0.0, 1.5)]
    assert (images[0] - images[1]).abs().max() > 1e-2


def test_explorer_shows_base_and_adapter_with_the_controls_a_browser_looks_for(parts, adapters, sample_calls):
    explorer = explorer_module.lora_explorer(adapters, *parts[1:], PROMPT, scale=1.0, rank=2, **FAST)
    assert explorer.prompt_box.description == "prompt"
    assert explorer.scale_slider.description == "LoRA scale"
    assert (explorer.scale_slider.min, explorer.scale_slider.max) == (0.0, 1.5)
    assert explorer.rank_buttons.description == "rank" and list(explorer.rank_buttons.options) == [1, 2]
    assert explorer.seed_slider.description == "seed"
    png = shown_png(explorer)
    assert png.startswith(b"\x89PNG") and png == explorer.png
    assert explorer.renders == 1 and explorer.samplings == 2 and len(sample_calls) == 2  # base + adapter
    left, right = (ax.images[0].get_array() for ax in explorer.figure().axes)
    np.testing.assert_allclose(left, as_drawn(independent_sample(parts, adapters[2], 0.0, **FAST)), atol=1e-5)
    np.testing.assert_allclose(right, as_drawn(independent_sample(parts, adapters[2], 1.0, **FAST)), atol=1e-5)
    assert "rank <b>2</b>" in explorer.readout.value
    assert f"{ALPHA / 2:.3g} B A" in explorer.readout.value  # scale 1 x alpha / r


def test_moving_the_scale_or_rank_redraws_once_and_samples_only_what_is_new(parts, adapters, sample_calls):
    explorer = explorer_module.lora_explorer(adapters, *parts[1:], PROMPT, scale=1.0, rank=1, **FAST)
    before = shown_png(explorer)
    explorer.scale_slider.value = 0.5
    assert explorer.renders == 2 and len(sample_calls) == 3  # only the adapter panel is new
    after = shown_png(explorer)
    assert not np.array_equal(matplotlib.image.imread(io.BytesIO(after)), matplotlib.image.imread(io.BytesIO(before)))
    explorer.rank_buttons.value = 2
    assert explorer.renders == 3 and len(sample_calls) == 4  # the base model is shared by every rank
    right = explorer.figure().axes[1].images[0].get_array()
    explorer.rank_buttons.value = 1
    explorer.scale_slider.value = 1.0  # back to settings seen before: from the cache
    assert len(sample_calls) == 4 and explorer.renders == 5
    explorer.seed_slider.value = 3  # a new seed: base and adapter again
    assert len(sample_calls) == 6
    np.testing.assert_allclose(right, as_drawn(independent_sample(parts, adapters[2], 0.5, **FAST)), atol=1e-5)


def test_the_static_figure_rows_are_ranks_and_columns_scales(parts, adapters):
    scales = (0.0, 1.0, 1.5)
    fig = explorer_module.lora_figure(adapters, *parts[1:], PROMPT, scales, **FAST)
    assert len(fig.axes) == len(adapters) * len(scales)
    for row, (rank, model) in enumerate(adapters.items()):
        assert fig.axes[row * len(scales)].get_ylabel() == f"rank r = {rank}"
        for col, s in enumerate(scales):
            ax = fig.axes[row * len(scales) + col]
            assert ax.get_title().startswith(f"scale {s:g}\n")
            np.testing.assert_allclose(ax.images[0].get_array(),
                                       as_drawn(independent_sample(parts, model, s, **FAST)), atol=1e-5)
    assert PROMPT in fig._suptitle.get_text()


def test_one_adapted_unet_is_taken_as_its_own_rank(parts, adapters):
    fig = explorer_module.lora_figure(adapters[2], *parts[1:], PROMPT, (1.0,), **FAST)
    assert fig.axes[0].get_ylabel() == "rank r = 2"


def test_the_judge_reading_names_what_it_sees():
    from minildm import data
    image = data.from_caption("a large blue star in the center on black").images[0]
    assert explorer_module.judge_reading(image) == "large blue star, center"
    assert explorer_module.judge_reading(-torch.ones(3, 32, 32)) == "nothing"


def test_bad_adapters_and_settings_are_refused_clearly(parts, adapters):
    net, vae, clip, schedule = parts
    merged = copy.deepcopy(adapters[1])
    lora.merge(merged)
    cases = [
        (net, ValueError, "the U-Net has no LoRA layers"),
        ({}, TypeError, "adapters must be an adapted U-Net or a non-empty dict"),
        ({1: net}, ValueError, "adapters[1] has no LoRA layers"),
        ({1: merged}, ValueError, "adapters[1] is merged"),
        ({3: adapters[1]}, ValueError, "adapters[3] has LoRA layers of rank [1], not 3"),
        ({1: "unet"}, TypeError, "adapters[1] must be a U-Net with LoRA layers"),
    ]
    for bad, error, words in cases:
        with pytest.raises(error, match=re.escape(words)):
            explorer_module.lora_explorer(bad, vae, clip, schedule, PROMPT, **FAST)
        with pytest.raises(error, match=re.escape(words)):
            explorer_module.lora_figure(bad, vae, clip, schedule, PROMPT, **FAST)
    settings = [
        ({"scale": 2.0}, ValueError, "scale must lie in [0, max_scale=1.5]"),
        ({"scale": -0.5}, ValueError, "scale must be >= 0"),
        ({"rank": 4}, ValueError, "rank must be one of the adapters' ranks [1, 2]"),
        ({"seed": 100}, ValueError, "seed must be in [0, 99]"),
        ({"prompt": ""}, ValueError, "prompt must be a non-empty string"),
        ({"steps": 0}, ValueError, "steps must be in [1, 100]"),
    ]
    for change, error, words in settings:
        with pytest.raises(error, match=re.escape(words)):
            explorer_module.lora_explorer(adapters, vae, clip, schedule, **({"prompt": PROMPT, **FAST} | change))
    with pytest.raises(ValueError, match="scales must be a non-empty list"):
        explorer_module.lora_figure(adapters, vae, clip, schedule, PROMPT, scales=(), **FAST)
    with pytest.raises(ValueError, match=re.escape("clip's text width is 16")):
        wide = unet.UNet(in_channels=4, base=8, mults=(1, 2), attn_levels=(1,), context_dim=32)
        lora.inject(wide, r=1)
        explorer_module.lora_explorer({1: wide}, vae, clip, schedule, PROMPT, **FAST)


def test_the_widgets_module_re_exports_the_explorer():
    from minildm import widgets
    assert widgets.lora_explorer is explorer_module.lora_explorer
    assert widgets.lora_figure is explorer_module.lora_figure
    assert widgets.LoRAExplorer is explorer_module.LoRAExplorer
