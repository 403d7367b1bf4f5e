"""The latent diffusion pipeline: scaled latents, caption dropout, text-to-image, inpainting, concatenation."""

import pytest
import torch

from minildm import diffusion, ldm, samplers, text, unet
from minildm.controlnet import ControlledUNet, ControlNet, MultiControlNet


@pytest.fixture(scope="module")
def parts(make_tiny_ldm):
    net, vae, clip, schedule = make_tiny_ldm()
    return vae, clip, net, schedule


PROMPTS = ["a small red circle in the top left on white", "a large blue square in the center on black"]


def test_encode_scales_the_latents_and_decode_undoes_the_scale(parts):
    vae, *_ = parts
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).mode()
        torch.testing.assert_close(ldm.encode(vae, x), 0.5 * z)
        torch.testing.assert_close(ldm.decode(vae, 0.5 * z), vae.decode(z).clamp(-1, 1))


def test_text_context_is_the_clip_last_hidden_state(parts):
    _, clip, *_ = parts
    ids, mask = text.encode(PROMPTS, clip.max_length)
    with torch.no_grad():
        want = clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ldm.text_context(clip, PROMPTS), want)


def test_caption_dropout_swaps_in_the_empty_prompt_with_its_probability(parts):
    _, clip, net, schedule = parts
    z0 = torch.randn(2, 4, 8, 8)
    ctx, empty = ldm.text_context(clip, PROMPTS), ldm.text_context(clip, [ldm.EMPTY_PROMPT])
    # the same draws by hand: dropout mask first, then t and noise, from one generator
    g = torch.Generator().manual_seed(3)
    dropped = torch.rand(2, generator=g) < 0.5
    expected_ctx = torch.where(dropped[:, None, None], empty, ctx)
    want = diffusion.loss_simple(lambda x, t, context: net(x, t, context=context), z0, schedule, generator=g,
                                 model_kwargs={"context": expected_ctx})
    got = ldm.loss(net, z0, ctx, empty, schedule, caption_dropout=0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="caption_dropout"):
        ldm.loss(net, z0, ctx, empty, schedule, caption_dropout=1.0, generator=g)


def test_sample_is_ddim_in_latent_space_then_one_decode(parts):
    vae, clip, net, schedule = parts
    got = ldm.sample(net, vae, clip, schedule, PROMPTS, steps=5, guidance_scale=3.0, seed=1)
    cond = {"context": ldm.text_context(clip, PROMPTS), "concat": None}
    uncond = {"context": ldm.text_context(clip, ["", ""]), "concat": None}
    z = samplers.sample(ldm.denoiser(net), schedule, (2, 4, 8, 8), sampler="ddim", steps=5,
                        generator=torch.Generator().manual_seed(1), model_kwargs=cond, guidance_scale=3.0,
                        uncond_kwargs=uncond, device="cpu")
    torch.testing.assert_close(got, ldm.decode(vae, z))
    assert got.shape == (2, 3, 32, 32) and got.abs().max() <= 1
    other = ldm.sample(net, vae, clip, schedule, PROMPTS[::-1], steps=5, guidance_scale=3.0, seed=1)
    assert not torch.allclose(got, other)  # the prompt matters


def test_inpainting_keeps_the_unmasked_pixels_and_the_latent_mask_covers_every_masked_pixel(parts):
    vae, clip, net, schedule = parts
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 5:13, 17:30] = 1
    m = ldm.latent_mask(mask, 4)
    assert m.shape == (2, 1, 8, 8) and m[:, :, 1:4, 4:8].eq(1).all() and m.sum() == 2 * 3 * 4
    out = ldm.inpaint(net, vae, clip, schedule, images, mask, PROMPTS, steps=4, guidance_scale=2.0)
    assert torch.equal(out[mask.expand_as(out) == 0], images[mask.expand_as(images) == 0])
    assert not torch.allclose(out[mask.expand_as(out) == 1], images[mask.expand_as(images) == 1])


def test_inpainting_replaces_the_kept_latent_region_by_the_noised_known_latent(parts):
    vae, clip, net, schedule = parts
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :] = 1
    seen = []
    ldm.inpaint(net, vae, clip, schedule, images, mask, PROMPTS[:1], steps=3,
                callback=lambda i, t, z, z0: seen.append(z.clone()))
    # after the last step the kept half is exactly the image's latent
    torch.testing.assert_close(seen[-1][..., 4:, :], ldm.encode(vae, images)[..., 4:, :])


def test_concatenated_conditioning_enters_the_unet_input():
    torch.manual_seed(0)
    net = unet.UNet(in_channels=4 + 3, out_channels=4, base=8, mults=(1, 2), attn_levels=(1,), context_dim=16)
    z, low = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 8, 8)
    ctx, t = torch.randn(2, 5, 16), torch.tensor([3, 9])
    torch.testing.assert_close(ldm.denoiser(net)(z, t, ctx, low), net(torch.cat([z, low], 1), t, context=ctx))


def test_bad_input_is_refused(parts):
    vae, clip, net, schedule = parts
    with pytest.raises(TypeError, match="prompts must be a non-empty list"):
        ldm.sample(net, vae, clip, schedule, "a red circle", steps=2)
    with pytest.raises(ValueError, match="mask must be"):
        ldm.latent_mask(torch.zeros(1, 3, 8, 8), 4)
    with pytest.raises(ValueError, match="one prompt per image"):
        ldm.inpaint(net, vae, clip, schedule, torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 32, 32), PROMPTS[:1])


# ---------------------------------------------------------------- sampling with a ControlNet (lesson 14)

def trained_controlnet(net, seed: int = 0):
    """A ControlNet for ``net`` whose zero convolutions are no longer zero, as training leaves them."""
    torch.manual_seed(seed)
    controlnet = ControlNet.from_unet(net, condition_channels=1, factor=4)
    with torch.no_grad():
        for p in controlnet.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return controlnet.eval()


def test_at_control_scale_zero_the_samples_equal_the_base_models_exactly(parts):
    vae, clip, net, schedule = parts
    edges = torch.randn(2, 1, 32, 32)
    base = ldm.sample(net, vae, clip, schedule, PROMPTS, steps=4, guidance_scale=3.0, seed=2)
    for guess_mode in (False, True):
        zero = ldm.sample(net, vae, clip, schedule, PROMPTS, steps=4, guidance_scale=3.0, seed=2,
                          control=trained_controlnet(net), condition=edges, control_scale=0.0, guess_mode=guess_mode)
        assert torch.equal(zero, base)
    steered = ldm.sample(net, vae, clip, schedule, PROMPTS, steps=4, guidance_scale=3.0, seed=2,
                         control=trained_controlnet(net), condition=edges)
    assert not torch.allclose(steered, base, atol=1e-3)


@pytest.mark.parametrize("guess_mode", [False, True])
def test_control_steers_both_guidance_branches_and_in_guess_mode_only_the_conditional_one(parts, guess_mode):
    # diffusers' StableDiffusionControlNetPipeline: the ControlNet runs on the doubled (uncond, cond) batch,
    # except in guess mode, where it runs on the conditional half and the unconditional half gets no residuals
    vae, clip, net, schedule = parts
    controlnet, edges = trained_controlnet(net, seed=1), torch.randn(2, 1, 32, 32)
    got = ldm.sample(net, vae, clip, schedule, PROMPTS, steps=4, guidance_scale=2.5, seed=3, control=controlnet,
                     condition=edges, control_scale=0.7, guess_mode=guess_mode)

    def eps(z, t, context, condition=None):
        if condition is None:
            return net(z, t, context=context)
        down, mid = controlnet(z, t, condition, context=context, scale=0.7, guess_mode=guess_mode)
        return net(z, t, context=context, down_residuals=down, mid_residual=mid)

    cond = {"context": ldm.text_context(clip, PROMPTS), "condition": edges}
    uncond = {"context": ldm.text_context(clip, ["", ""]), "condition": None if guess_mode else edges}
    z = samplers.sample(eps, schedule, (2, 4, 8, 8), sampler="ddim", steps=4, generator=torch.Generator().manual_seed(3),
                        model_kwargs=cond, guidance_scale=2.5, uncond_kwargs=uncond, device="cpu")
    torch.testing.assert_close(got, ldm.decode(vae, z))


def test_several_controlnets_sample_with_the_sum_of_their_scaled_residuals(parts):
    vae, clip, net, schedule = parts
    a, b = trained_controlnet(net, seed=2), trained_controlnet(net, seed=3)
    ca, cb = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    got = ldm.sample(net, vae, clip, schedule, PROMPTS, steps=3, seed=4, control=MultiControlNet([a, b]),
                     condition=[ca, cb], control_scale=[1.0, 0.5])

    def eps(z, t, context):
        da, ma = a(z, t, ca, context=context, scale=1.0)
        db, mb = b(z, t, cb, context=context, scale=0.5)
        return net(z, t, context=context, down_residuals=[x + y for x, y in zip(da, db)], mid_residual=ma + mb)

    z = samplers.sample(eps, schedule, (2, 4, 8, 8), sampler="ddim", steps=3, generator=torch.Generator().manual_seed(4),
                        model_kwargs={"context": ldm.text_context(clip, PROMPTS)}, device="cpu")
    torch.testing.assert_close(got, ldm.decode(vae, z))
    # with b at scale 0 the pair is a alone
    alone = ldm.sample(net, vae, clip, schedule, PROMPTS, steps=3, seed=4, control=a, condition=ca)
    pair = ldm.sample(net, vae, clip, schedule, PROMPTS, steps=3, seed=4, control=MultiControlNet([a, b]),
                      condition=[ca, cb], control_scale=[1.0, 0.0])
    assert torch.equal(alone, pair)


def test_the_controlnet_loss_feeds_the_condition_to_the_controlled_unet(parts):
    _, clip, net, schedule = parts
    controlnet, edges = trained_controlnet(net, seed=5), torch.randn(2, 1, 32, 32)
    z0 = torch.randn(2, 4, 8, 8)
    ctx, empty = ldm.text_context(clip, PROMPTS), ldm.text_context(clip, [ldm.EMPTY_PROMPT])
    g = torch.Generator().manual_seed(7)
    dropped = torch.rand(2, generator=g) < 0.5
    expected_ctx = torch.where(dropped[:, None, None], empty, ctx)

    def eps(x, t, context):
        down, mid = controlnet(x, t, edges, context=context)
        return net(x, t, context=context, down_residuals=down, mid_residual=mid)

    want = diffusion.loss_simple(eps, z0, schedule, generator=g, model_kwargs={"context": expected_ctx})
    got = ldm.loss(ControlledUNet(net, controlnet), z0, ctx, empty, schedule, caption_dropout=0.5,
                   generator=torch.Generator().manual_seed(7), condition=edges)
    torch.testing.assert_close(got, want)


def test_bad_control_arguments_are_refused(parts):
    vae, clip, net, schedule = parts
    edges = torch.randn(2, 1, 32, 32)
    with pytest.raises(ValueError, match="condition was given without control"):
        ldm.sample(net, vae, clip, schedule, PROMPTS, steps=2, condition=edges)
    with pytest.raises(TypeError, match="control must be a ControlNet"):
        ldm.sample(net, vae, clip, schedule, PROMPTS, steps=2, control=net, condition=edges)
    with pytest.raises(ValueError, match="one image per prompt"):
        ldm.sample(net, vae, clip, schedule, PROMPTS, steps=2, control=trained_controlnet(net), condition=edges[:1])
    with pytest.raises(ValueError, match="one per ControlNet"):
        ldm.sample(net, vae, clip, schedule, PROMPTS, steps=2, control=MultiControlNet([trained_controlnet(net)] * 2),
                   condition=edges)
