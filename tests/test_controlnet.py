"""minildm.controlnet: the trainable copy, zero convolutions, and how the residuals reach the locked U-Net."""

import json
import math

import pytest
import torch

from minildm import diffusion, samplers
from minildm import nn as blocks
from minildm.controlnet import (ENCODER_PARTS, ControlledUNet, ControlNet, MultiControlNet, combine,
                                scale_residuals, unet_config_of)
from minildm.schedules import NoiseSchedule, make_betas
from minildm.unet import UNet


@pytest.fixture(autouse=True)
def seeded():
    """Every test draws the same random inputs on every run."""
    torch.manual_seed(0)


# the LDM's layout (latents 4 times smaller than the condition, text context) and a pixel-space one
# (condition at the image's size, class labels, attention gates, self-attention at two levels)
LATENT = dict(unet=dict(in_channels=4, base=8, mults=(1, 2), attn_levels=(1,), num_res_blocks=1, heads=2,
                        groups=4, context_dim=6), factor=4, size=8)
PIXEL = dict(unet=dict(in_channels=3, base=8, mults=(1, 2, 2), attn_levels=(1, 2), num_res_blocks=2, heads=4,
                       groups=4, num_classes=5, attention_gates=True), factor=1, size=8)
SETUPS = {"latent": LATENT, "pixel": PIXEL}


def awake(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights in every zero-initialised proj_out, as training gives, so the context reaches the output."""
    for m in model.modules():
        if isinstance(m, blocks.SpatialTransformer):
            torch.nn.init.normal_(m.proj_out.weight, std=0.3)
    return model


def perturb(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """Random noise on every parameter, zero convolutions included: a ControlNet as training might leave it."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn_like(p))
    return model


def setup(name: str, B: int = 2, condition_channels: int = 1):
    """A random (awake) U-Net, its ControlNet, and matching inputs: x, t, condition and the U-Net's kwargs."""
    s = SETUPS[name]
    unet = awake(UNet(**s["unet"]))
    controlnet = ControlNet.from_unet(unet, condition_channels=condition_channels, factor=s["factor"])
    x = torch.randn(B, unet.in_channels, s["size"], s["size"])
    side = s["factor"] * s["size"]
    condition = torch.randn(B, condition_channels, side, side)
    kwargs = {}
    if unet.num_classes is not None:
        kwargs["y"] = torch.randint(0, unet.num_classes + 1, (B,))
    if unet.context_dim is not None:
        kwargs["context"] = torch.randn(B, 3, unet.context_dim)
    return unet, controlnet, x, torch.tensor([7, 420])[:B], condition, kwargs


def controlled(unet, controlnet, x, t, condition, kwargs, **options):
    down, mid = controlnet(x, t, condition, **kwargs, **options)
    return unet(x, t, **kwargs, down_residuals=down, mid_residual=mid)


# ---------------------------------------------------------------- zero convolutions: y_c = F(x; Theta) at first

@pytest.mark.parametrize("name", SETUPS)
@pytest.mark.parametrize("kind", ["gaussian", "edges", "huge"])
def test_at_initialisation_the_controlled_unet_equals_the_plain_unet_exactly_for_any_condition(name, kind):
    unet, controlnet, x, t, condition, kwargs = setup(name)
    condition = {"gaussian": condition, "edges": torch.where(condition > 0, 1.0, -1.0), "huge": 1e4 * condition}[kind]
    down, mid = controlnet(x, t, condition, **kwargs)
    assert all(torch.count_nonzero(r) == 0 for r in [*down, mid])
    assert torch.equal(controlled(unet, controlnet, x, t, condition, kwargs), unet(x, t, **kwargs))


@pytest.mark.parametrize("name", SETUPS)
def test_at_scale_zero_even_a_trained_controlnet_leaves_the_unet_output_exactly_unchanged(name):
    unet, controlnet, x, t, condition, kwargs = setup(name)
    perturb(controlnet)
    plain = unet(x, t, **kwargs)
    assert not torch.allclose(controlled(unet, controlnet, x, t, condition, kwargs), plain, atol=1e-3)
    assert torch.equal(controlled(unet, controlnet, x, t, condition, kwargs, scale=0.0), plain)


def test_zero_convolutions_get_weight_gradients_but_pass_none_back_at_initialisation():
    # y = W x + b with W = 0:  dL/dW = sum_pixels (dL/dy) x^T != 0,  dL/dx = W^T (dL/dy) = 0 (Zhang et al. 2023)
    unet, controlnet, x, t, condition, kwargs = setup("latent")
    convs = [*controlnet.zero_convs, controlnet.zero_mid]
    seen = {}
    hooks = [conv.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(i, (inp[0], out)))
             for i, conv in enumerate(convs)]
    loss = controlled(unet, controlnet, x, t, condition, kwargs).square().mean()
    for hook in hooks:
        hook.remove()
    inputs = [seen[i][0] for i in range(len(convs))]
    outputs = [seen[i][1] for i in range(len(convs))]
    grads = torch.autograd.grad(loss, [c.weight for c in convs] + inputs + outputs)
    n = len(convs)
    weight_grads, input_grads, output_grads = grads[:n], grads[n:2 * n], grads[2 * n:]
    for conv, x_in, g_out, g_w, g_x in zip(convs, inputs, output_grads, weight_grads, input_grads):
        # the 1x1 convolution's weight gradient in closed form: g_W[o, i] = sum_{b,h,w} g[b, o, h, w] x[b, i, h, w]
        expected = torch.einsum("bohw,bihw->oi", g_out, x_in)[:, :, None, None]
        assert torch.allclose(g_w, expected, rtol=1e-4, atol=1e-9)
        assert g_w.abs().max() > 1e-6
        assert torch.count_nonzero(g_x) == 0


def test_gradient_reaches_deeper_behind_each_zero_convolution_one_step_at_a_time():
    # step 1: only the output zero convs Z(.; Theta_z2) learn, everything behind them gets exactly zero gradient;
    # step 2: with Z_z2 != 0 the gradient reaches the copy and the hint's zero conv Z(.; Theta_z1);
    # step 3: with Z_z1 != 0 it reaches the hint encoder's first layers
    unet, controlnet, x, t, condition, kwargs = setup("latent")
    unet.requires_grad_(False)
    optimizer = torch.optim.SGD(controlnet.parameters(), lr=0.1)
    hint_zero = f"hint.{len(controlnet.hint) - 1}."
    groups = {"Z_z2": ("zero_convs.", "zero_mid."), "copy and Z_z1": ("conv_in.", "down.", "mid.", hint_zero),
              "hint encoder": ("hint.0.",)}
    first_step = {}
    for step in (1, 2, 3):
        optimizer.zero_grad()
        controlled(unet, controlnet, x, t, condition, kwargs).square().mean().backward()
        for group, prefixes in groups.items():
            grads = [p.grad for n, p in controlnet.named_parameters() if n.startswith(prefixes)]
            if group not in first_step and any(torch.count_nonzero(g) for g in grads):
                first_step[group] = step
        optimizer.step()
    assert first_step == {"Z_z2": 1, "copy and Z_z1": 2, "hint encoder": 3}


def test_training_the_controlnet_never_changes_the_locked_unet_and_moves_the_output():
    unet, controlnet, x0, _, condition, kwargs = setup("latent", B=4)
    unet.requires_grad_(False)
    locked = {n: p.clone() for n, p in unet.state_dict().items()}
    model = ControlledUNet(unet, controlnet)
    schedule = NoiseSchedule(make_betas("linear", 100))
    optimizer = torch.optim.Adam(controlnet.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        loss = diffusion.loss_simple(model, x0, schedule, generator=generator,
                                     model_kwargs={"condition": condition, **kwargs})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in unet.parameters())
    assert all(torch.equal(p, locked[n]) for n, p in unet.state_dict().items())
    t = torch.tensor([3, 50, 80, 99])
    steered = model(x0, t, condition=condition, **kwargs)
    assert not torch.allclose(steered, unet(x0, t, **kwargs), atol=1e-4)
    assert not torch.allclose(steered, model(x0, t, condition=-condition, **kwargs), atol=1e-6)  # c now matters


# ---------------------------------------------------------------- the trainable copy

@pytest.mark.parametrize("name", SETUPS)
def test_from_unet_copies_every_encoder_weight_into_separate_trainable_tensors(name):
    unet, controlnet, *_ = setup(name)
    locked = unet.state_dict()
    copied = {n: v for n, v in controlnet.state_dict().items() if n.split(".")[0] in ENCODER_PARTS}
    assert copied and set(copied) == {n for n in locked if n.split(".")[0] in ENCODER_PARTS}
    assert all(torch.equal(v, locked[n]) for n, v in copied.items())
    assert all(v.data_ptr() != locked[n].data_ptr() for n, v in copied.items())
    assert all(p.requires_grad for p in controlnet.parameters())


@pytest.mark.parametrize("name", SETUPS)
def test_the_copy_computes_the_locked_encoders_features(name):
    # with identity 1x1 "zero" convs the residuals are the copy's features; hooks read the U-Net's own skips
    unet, controlnet, x, t, condition, kwargs = setup(name)
    with torch.no_grad():
        for conv in [*controlnet.zero_convs, controlnet.zero_mid]:
            conv.weight.copy_(torch.eye(conv.in_channels)[:, :, None, None])
    features = []
    layers = [level[-1] for level in unet.down] + [unet.mid[-1]]
    hooks = [layer.register_forward_hook(lambda m, inp, out: features.append(out)) for layer in layers]
    unet(x, t, **kwargs)
    for hook in hooks:
        hook.remove()
    down, mid = controlnet(x, t, condition, **kwargs)
    for ours, theirs in zip([*down, mid], features):
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_unet_config_reads_back_the_arguments_and_the_config_is_json_that_rebuilds_the_controlnet():
    unet = UNet(in_channels=2, base=8, mults=(1, 2, 4), attn_levels=(0, 2), num_res_blocks=3, num_classes=4,
                context_dim=5, dropout=0.25, heads=8, groups=2, attention_gates=True, learned_range=True)
    assert unet_config_of(unet) == {"in_channels": 2, "base": 8, "mults": [1, 2, 4], "attn_levels": [0, 2],
                                 "num_res_blocks": 3, "num_classes": 4, "context_dim": 5, "dropout": 0.25,
                                 "heads": 8, "groups": 2}
    unet, controlnet, x, t, condition, kwargs = setup("pixel")
    perturb(controlnet)
    config = json.loads(json.dumps(controlnet.config))
    rebuilt = ControlNet(**config)
    rebuilt.load_state_dict(controlnet.state_dict())
    for a, b in zip(rebuilt(x, t, condition, **kwargs)[0], controlnet(x, t, condition, **kwargs)[0]):
        assert torch.equal(a, b)


def test_the_hint_encoder_maps_the_condition_to_the_unets_input_resolution():
    for factor in (1, 2, 4, 8):
        controlnet = ControlNet(LATENT["unet"], condition_channels=3, factor=factor)
        strides = [m.stride[0] for m in controlnet.hint if isinstance(m, torch.nn.Conv2d)]
        assert math.prod(strides) == factor
        assert controlnet.hint(torch.randn(1, 3, 8 * factor, 8 * factor)).shape == (1, 8, 8, 8)
        assert controlnet.zero_convolutions()[0] is controlnet.hint[-1]


# ---------------------------------------------------------------- where the residuals go in the U-Net

def test_the_unet_adds_residuals_to_the_skips_the_decoder_sees_and_to_the_middle_output():
    # as diffusers' UNet2DConditionModel: skip_k + r_k is what decoder level k concatenates, while the encoder's
    # own path down (the middle block's input) is untouched; the middle output + r_mid enters the decoder
    unet = awake(UNet(**{**PIXEL["unet"], "attention_gates": False}))  # no gate between a skip and the decoder
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([7, 420]), torch.tensor([0, 5])
    seen = {}
    hooks = [unet.mid[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("mid_in", args[0])),
             unet.mid[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("mid_out", out))]
    hooks += [level[0].register_forward_pre_hook(lambda m, args, k=k: seen.__setitem__(k, args[0]))
              for k, level in enumerate(unet.up)]
    unet(x, t, y)
    plain = dict(seen)
    down = [torch.randn_like(plain[k][:, -unet.base * m:]) for k, m in enumerate(unet.mults)]
    mid = torch.randn_like(plain["mid_out"])
    unet(x, t, y, down_residuals=down, mid_residual=mid)
    for hook in hooks:
        hook.remove()
    assert torch.equal(seen["mid_in"], plain["mid_in"])
    for k, m in enumerate(unet.mults):
        assert torch.allclose(seen[k][:, -unet.base * m:], plain[k][:, -unet.base * m:] + down[k])
    deepest = len(unet.mults) - 1  # no upsample before it: its first channels are the middle output itself
    assert torch.allclose(seen[deepest][:, :plain["mid_out"].shape[1]], plain["mid_out"] + mid)


# ---------------------------------------------------------------- control scale, guess mode, several ControlNets

def test_the_scale_multiplies_every_residual_and_guess_mode_weights_them_from_0_1_to_1():
    unet, controlnet, x, t, condition, kwargs = setup("pixel")
    perturb(controlnet)
    down, mid = controlnet(x, t, condition, **kwargs)
    residuals = [*down, mid]
    n = len(residuals)
    scaled = controlnet(x, t, condition, **kwargs, scale=2.5)
    for ours, r in zip([*scaled[0], scaled[1]], residuals):
        assert torch.allclose(ours, 2.5 * r, rtol=1e-5, atol=1e-7)
    guessed = controlnet(x, t, condition, **kwargs, scale=0.7, guess_mode=True)
    for k, (ours, r) in enumerate(zip([*guessed[0], guessed[1]], residuals)):
        # shallowest skip 0.1, geometric steps, the middle block 1.0; all times the scale
        weight = 0.7 * 10 ** (-1 + k / (n - 1))
        assert torch.allclose(ours, weight * r, rtol=1e-5, atol=1e-7)


def test_two_controlnets_combine_as_the_sum_of_their_weighted_residuals():
    unet, edges_net, x, t, edges, kwargs = setup("latent")
    masks_net = perturb(ControlNet.from_unet(unet, condition_channels=1, factor=4))
    perturb(edges_net)
    masks = (torch.rand_like(edges) > 0.5).float()
    e_down, e_mid = edges_net(x, t, edges, **kwargs)
    m_down, m_mid = masks_net(x, t, masks, **kwargs)
    expected_down = [0.8 * a + 1.5 * b for a, b in zip(e_down, m_down)]
    expected_mid = 0.8 * e_mid + 1.5 * m_mid
    multi = MultiControlNet([edges_net, masks_net])
    down, mid = multi(x, t, [edges, masks], **kwargs, scales=[0.8, 1.5])
    for ours, theirs in zip([*down, mid], [*expected_down, expected_mid]):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    direct = combine([scale_residuals((e_down, e_mid), 0.8), scale_residuals((m_down, m_mid), 1.5)])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip([*direct[0], direct[1]], [*down, mid]))
    both = ControlledUNet(unet, multi)(x, t, **kwargs, condition=[edges, masks], scale=[0.8, 1.5])
    assert torch.allclose(both, unet(x, t, **kwargs, down_residuals=expected_down, mid_residual=expected_mid),
                          atol=1e-5)


def test_a_controlled_unet_samples_and_without_a_condition_is_the_plain_unet():
    unet, controlnet, x, t, condition, kwargs = setup("latent")
    perturb(controlnet)
    model = ControlledUNet(unet, controlnet).eval()
    assert torch.equal(model(x, t, **kwargs), unet(x, t, **kwargs))
    schedule = NoiseSchedule(make_betas("linear", 100))
    out = samplers.sample(model, schedule, x.shape, sampler="ddim", steps=3, generator=torch.Generator().manual_seed(0),
                          model_kwargs={"condition": condition, **kwargs})
    assert out.shape == x.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("factor", [3, 6, 0, -4, 2.0])
def test_a_factor_that_is_not_a_power_of_two_is_refused(factor):
    with pytest.raises(ValueError, match="factor"):
        ControlNet(LATENT["unet"], factor=factor)


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (2, 3, 32, 32), (1, 1, 32, 32), (2, 1, 32, 16), (2, 32, 32)])
def test_a_condition_of_the_wrong_size_or_channels_is_refused(shape):
    unet, controlnet, x, t, condition, kwargs = setup("latent")
    with pytest.raises(ValueError, match=r"condition must have shape \(2, 1, 32, 32\)"):
        controlnet(x, t, torch.randn(shape), **kwargs)


def test_bad_arguments_raise_clear_errors():
    unet, controlnet, x, t, condition, kwargs = setup("latent")
    with pytest.raises(ValueError, match="condition must have shape"):
        controlnet(x, t, None, **kwargs)
    with pytest.raises(ValueError, match="context must have shape"):
        controlnet(x, t, condition)
    with pytest.raises(TypeError, match="scale must be a real number"):
        controlnet(x, t, condition, **kwargs, scale="1")
    with pytest.raises(TypeError, match="unet must be a minildm.unet.UNet"):
        ControlNet.from_unet(torch.nn.Conv2d(4, 4, 1))
    with pytest.raises(TypeError, match="unet_config must be a dict"):
        ControlNet(UNet(**LATENT["unet"]))
    with pytest.raises(ValueError, match="condition_channels must be a positive int"):
        ControlNet(LATENT["unet"], condition_channels=0)
    multi = MultiControlNet([controlnet, controlnet])
    with pytest.raises(ValueError, match="conditions must be a list of 2 tensors"):
        multi(x, t, [condition], **kwargs)
    with pytest.raises(ValueError, match="scales must be a number or a list of 2"):
        multi(x, t, [condition, condition], **kwargs, scales=[1.0])
    with pytest.raises(ValueError, match="nets must be a non-empty list of ControlNets"):
        MultiControlNet([])
    other = ControlNet(PIXEL["unet"])
    with pytest.raises(ValueError, match=r"outputs\[1\] has residual shapes"):
        combine([controlnet(x, t, condition, **kwargs), other(torch.randn(2, 3, 8, 8), t, torch.randn(2, 1, 8, 8),
                                                                 y=torch.tensor([0, 1]))])
    with pytest.raises(ValueError, match="at least one"):
        combine([])


def test_the_unet_refuses_residuals_of_the_wrong_number_or_shape():
    unet, controlnet, x, t, condition, kwargs = setup("latent")
    down, mid = controlnet(x, t, condition, **kwargs)
    with pytest.raises(ValueError, match="one tensor per skip: 2"):
        unet(x, t, **kwargs, down_residuals=down[:1], mid_residual=mid)
    with pytest.raises(ValueError, match="down_residuals must be a list of 2 tensors"):
        unet(x, t, **kwargs, down_residuals=down[0], mid_residual=mid)
    with pytest.raises(ValueError, match=r"down_residuals\[1\] must have the shape .*\(2, 16, 4, 4\)"):
        unet(x, t, **kwargs, down_residuals=[down[0], down[0]], mid_residual=mid)
    with pytest.raises(ValueError, match=r"mid_residual must have the shape .*\(2, 16, 4, 4\)"):
        unet(x, t, **kwargs, down_residuals=down, mid_residual=mid[:1])
    with pytest.raises(ValueError, match=r"mid_residual must be a tensor"):
        unet(x, t, **kwargs, mid_residual=0.5)
