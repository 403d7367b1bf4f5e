"""The lesson 12 checks accept answers computed another way, and refuse plausible wrong ones.

The references inside ``minildm.checks.lesson12`` are compared here with independent
computations: numpy's standard deviation, captions dropped one by one in a loop, the blend
written in numpy, and latent cells inspected one at a time. The inpainting blend is also tied
to the package: one step of ``ldm.inpaint`` redone by hand with the check's formula gives the
latent ``inpaint`` hands its callback. (Each listed Mistake being named as itself is pinned
generically in test_lesson_checks.py.)
"""

import numpy as np
import pytest
import torch

from minildm import autoencoders, ldm, samplers, schedules, text, unet
from minildm.checks import CheckFailed
from minildm.checks import lesson12 as L12


def scale_factor_numpy(latents):
    return 1.0 / float(np.std(latents.numpy().astype(np.float64), ddof=1))


def scale_factor_biased(latents):
    # the population std (ddof = 0) differs by a factor 1 + O(1 / N): accepted as well
    return 1.0 / float(np.std(latents.numpy(), ddof=0))


def drop_captions_by_loop(context, empty_context, u, p):
    out = context.clone()
    for i in range(len(u)):
        if u[i] < p:
            out[i] = empty_context[0]
    return out


def blend_numpy(z_prev, z0_known, mask, alpha_bar_prev, noise):
    m, known = mask.numpy(), z0_known.numpy()
    noised = np.sqrt(alpha_bar_prev) * known + np.sqrt(1 - alpha_bar_prev) * noise.numpy()
    return torch.from_numpy(np.where(m == 1, z_prev.numpy(), noised).astype(np.float32))


def latent_mask_by_cells(mask, factor):
    B, _, H, W = mask.shape
    out = torch.zeros(B, 1, H // factor, W // factor)
    for b in range(B):
        for i in range(H // factor):
            for j in range(W // factor):
                cell = mask[b, 0, i * factor:(i + 1) * factor, j * factor:(j + 1) * factor]
                out[b, 0, i, j] = float(bool(cell.any()))
    return out


@pytest.mark.parametrize("check, independent", [
    (L12.latent_scale_factor, scale_factor_numpy),
    (L12.latent_scale_factor, scale_factor_biased),
    (L12.drop_captions, drop_captions_by_loop),
    (L12.inpaint_blend, blend_numpy),
    (L12.latent_mask, latent_mask_by_cells),
], ids=["latent_scale_factor", "latent_scale_factor_ddof0", "drop_captions", "inpaint_blend", "latent_mask"])
def test_check_accepts_an_independent_computation(check, independent):
    check(independent)  # raises CheckFailed if the reference disagrees with the independent answer


def test_a_per_channel_scale_factor_is_told_to_give_one_number():
    with pytest.raises(CheckFailed, match="expected a number, got a torch.Tensor"):
        L12.latent_scale_factor(lambda latents: 1 / latents.std(dim=(0, 2, 3)))


def test_the_latent_mask_check_accepts_a_boolean_any_and_refuses_a_bool_dtype():
    def any_pool(mask, factor):
        B, _, H, W = mask.shape
        cells = mask.reshape(B, 1, H // factor, factor, W // factor, factor)
        return cells.amax(dim=(3, 5))
    L12.latent_mask(any_pool)
    with pytest.raises(CheckFailed, match="dtype"):
        L12.latent_mask(lambda mask, factor: any_pool(mask, factor).bool())


def test_the_blend_is_the_one_ldm_inpaint_applies_after_each_step():
    # one step of ldm.inpaint redone by hand: DDIM step, then the check's blend with the next noise draw
    torch.manual_seed(0)
    vae = autoencoders.AutoencoderKL(latent_channels=4, factor=4, base=8).eval()
    vae.scale_factor.fill_(0.5)
    clip = text.MiniCLIP(embed_dim=16, text_width=16, text_layers=1, vision_width=16, vision_layers=1).eval()
    net = unet.UNet(in_channels=4, base=8, mults=(1, 2), attn_levels=(1,), num_res_blocks=1, context_dim=16).eval()
    schedule = schedules.NoiseSchedule(schedules.make_betas("cosine", 100))
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 6:19, 3:13] = 1
    prompt = ["a small red circle in the top left on white"]
    seen = []
    ldm.inpaint(net, vae, clip, schedule, images, mask, prompt, steps=3, seed=5,
                callback=lambda i, t, z, z0: seen.append(z.clone()))

    generator = torch.Generator().manual_seed(5)
    z0_known = ldm.encode(vae, images)  # (1, 4, 8, 8)
    z_T = torch.randn(z0_known.shape, generator=generator)
    ts = samplers.timesteps(schedule.T, 3)
    with torch.no_grad():
        eps = net(z_T, torch.full((1,), int(ts[0])), context=ldm.text_context(clip, prompt))
    z_prev, _ = samplers.ddim_step(schedule, eps, int(ts[0]), int(ts[1]), z_T)
    noise = torch.randn(z0_known.shape, generator=generator)
    m = L12._latent_mask(mask, 4)
    blended = L12._blend_with(L12._q_sample)(z_prev, z0_known, m, float(schedule.alpha_bar[int(ts[1])]), noise)
    torch.testing.assert_close(seen[0], blended, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("check", [L12.latent_scale_factor, L12.drop_captions, L12.inpaint_blend, L12.latent_mask])
def test_an_exercise_not_yet_done_passes_its_not_implemented_error_through(check):
    def not_done(**kwargs):
        raise NotImplementedError()
    with pytest.raises(NotImplementedError):
        check(not_done)
