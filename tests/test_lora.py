"""minildm.lora: LoRA layers, inject / merge / unmerge / scale / save / load, and parity with peft.

peft's naming, checked against peft 0.21: after ``inject_adapter_in_model`` a wrapped layer
keeps its Linear as ``base_layer`` and one A / B per adapter name, so the model's own
state dict says ``attn1.to_q.lora_A.default.weight``; ``get_peft_model_state_dict`` drops
the adapter name ("default") and gives ``attn1.to_q.lora_A.weight``, which is what we save.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from minildm import checkpoint, lora
from minildm import nn as blocks

peft = pytest.importorskip("peft")

D = 16
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


class Attention(nn.Module):
    """diffusers' attention layout: to_q / to_k / to_v and to_out = [Linear, Dropout]."""

    def __init__(self, dim=D):
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x):  # (B, N, C) -> (B, N, C)
        attn = torch.softmax(self.to_q(x) @ self.to_k(x).transpose(1, 2) / math.sqrt(x.shape[-1]), dim=-1)
        return self.to_out[0](attn @ self.to_v(x))


class Block(nn.Module):
    """Two attentions plus Linears whose names must NOT match the targets."""

    def __init__(self):
        super().__init__()
        self.attn1, self.attn2 = Attention(), Attention()
        self.xto_q = nn.Linear(D, D)  # ends with "to_q" as a string, not as a name component
        self.proj = nn.Linear(D, D)

    def forward(self, x):
        x = x + self.attn1(x)
        return self.proj(self.xto_q(x + self.attn2(x)))


def peft_and_ours(r=4, alpha=8.0):
    """The same Block adapted by peft and by us, with peft's random (non-zero) A and B copied into ours."""
    base = Block()
    theirs = peft.inject_adapter_in_model(
        peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False), copy.deepcopy(base))
    ours = copy.deepcopy(base)
    lora.inject(ours, TARGETS, r=r, alpha=alpha)
    with torch.no_grad():
        for key, value in peft.get_peft_model_state_dict(theirs).items():
            ours.get_parameter(key).copy_(value)
    return base, theirs, ours


def wrapped(model, name):
    return model.get_submodule(name)


# --- one layer --------------------------------------------------------------------------


def test_scaling_is_alpha_over_r_so_rank_4_alpha_8_gives_2_as_in_peft():
    _, theirs, ours = peft_and_ours(r=4, alpha=8.0)
    assert wrapped(ours, "attn1.to_q").scaling == 2.0 == theirs.attn1.to_q.scaling["default"]
    assert lora.LoRALinear(nn.Linear(8, 8), r=16, alpha=4.0).scaling == 0.25


def test_B_starts_at_zero_so_the_wrapped_layer_equals_its_base_exactly():
    base = nn.Linear(D, 12)
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8.0)
    assert layer.lora_A.weight.shape == (4, D) and layer.lora_B.weight.shape == (12, 4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    x = torch.randn(3, 7, D)
    assert torch.equal(layer(x), base(x))


def test_A_starts_kaiming_uniform_with_a_sqrt5_like_peft():
    fan_in = 512
    layer = lora.LoRALinear(nn.Linear(fan_in, 8), r=64, alpha=8.0)
    # Kaiming uniform, gain sqrt(2 / (1 + a^2)) with a = sqrt(5): U(-b, b), b = gain sqrt(3 / fan_in) = 1 / sqrt(fan_in)
    bound = 1 / math.sqrt(fan_in)
    A = layer.lora_A.weight
    assert A.abs().max() <= bound and A.abs().max() > 0.99 * bound
    assert abs(A.var().item() - bound**2 / 3) < 0.05 * bound**2 / 3  # Var U(-b, b) = b^2 / 3, 32k draws
    # and the very same numbers as peft's default init from the same seed
    base = Block()
    torch.manual_seed(1)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["to_q"]),
                                          copy.deepcopy(base.attn1))
    torch.manual_seed(1)
    ours = lora.LoRALinear(copy.deepcopy(base.attn1.to_q), r=4, alpha=8.0)
    assert torch.equal(ours.lora_A.weight, theirs.to_q.lora_A["default"].weight)


def test_forward_and_delta_weight_match_peft_with_the_same_A_and_B():
    _, theirs, ours = peft_and_ours()
    x = torch.randn(2, 5, D)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    for name in ["attn1.to_q", "attn2.to_out.0"]:
        ours_layer, their_layer = wrapped(ours, name), wrapped(theirs, name)
        assert torch.allclose(ours_layer.delta_weight(), their_layer.get_delta_weight("default"), atol=1e-7)
        # delta W = (alpha / r) B A, from the tensors themselves
        expected = 2.0 * their_layer.lora_B["default"].weight @ their_layer.lora_A["default"].weight
        assert torch.allclose(ours_layer.delta_weight(), expected, atol=1e-7)


def test_forward_is_base_plus_scaled_low_rank_path():
    layer = lora.LoRALinear(nn.Linear(D, 6), r=3, alpha=6.0)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, D)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A.weight, layer.lora_B.weight
    # h = x W^T + b + (alpha / r) x A^T B^T
    expected = x @ W.T + b + 2.0 * x @ A.T @ B.T
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_merge_gives_peft_merged_weights_and_the_same_outputs_and_unmerge_restores_W():
    base, theirs, ours = peft_and_ours()
    x = torch.randn(2, 5, D)
    adapted = ours(x)
    lora.merge(ours)
    for layer in theirs.modules():
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            layer.merge()
    for name in ["attn1.to_q", "attn1.to_out.0", "attn2.to_v"]:
        assert torch.allclose(wrapped(ours, name).base_layer.weight, wrapped(theirs, name).base_layer.weight,
                              atol=1e-7)
    assert torch.allclose(ours(x), adapted, atol=1e-6)
    lora.unmerge(ours)
    for name in ["attn1.to_q", "attn1.to_out.0", "attn2.to_v"]:
        assert torch.allclose(wrapped(ours, name).base_layer.weight, wrapped(base, name).weight, atol=1e-7)
    assert torch.allclose(ours(x), adapted, atol=1e-6)


def test_merging_twice_unmerging_unmerged_and_rescaling_merged_layers_are_refused():
    layer = lora.LoRALinear(nn.Linear(D, D), r=2, alpha=2.0)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.set_scale(0.5)


def test_scale_multiplies_the_update_and_zero_switches_it_off():
    base, theirs, ours = peft_and_ours()
    x = torch.randn(2, 5, D)
    full = ours.attn1.to_q(x) - base.attn1.to_q(x)
    lora.set_scale(ours, 0.5)
    assert torch.allclose(ours.attn1.to_q(x) - base.attn1.to_q(x), 0.5 * full, atol=1e-6)
    theirs.attn1.to_q.set_scale("default", 0.5)
    assert ours.attn1.to_q.scaling == theirs.attn1.to_q.scaling["default"] == 1.0
    lora.set_scale(ours, 0.0)
    assert torch.equal(ours(x), base(x))


def test_dropout_acts_on_the_low_rank_path_only_in_training():
    layer = lora.LoRALinear(nn.Linear(D, D), r=4, alpha=4.0, dropout=0.5)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(64, D)
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)  # the same dropout mask, drawn by F.dropout
    # training: h = W x + b + (alpha / r) B A dropout(x), the base path sees all of x
    expected = layer.base_layer(x) + F.dropout(x, 0.5) @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.equal(layer(x), out)
    layer.eval()
    # eval: no dropout, h = W x + b + (alpha / r) B A x
    expected = layer.base_layer(x) + x @ layer.lora_A.weight.T @ layer.lora_B.weight.T
    assert torch.allclose(layer(x), expected, atol=1e-6)


# --- a model ----------------------------------------------------------------------------


def test_inject_wraps_exactly_the_target_linears_matched_on_whole_name_components():
    model = Block()
    lora.inject(model, TARGETS)
    wrapped_names = {name for name, m in model.named_modules() if isinstance(m, lora.LoRALinear)}
    assert wrapped_names == {f"attn{i}.{t}" for i in (1, 2) for t in TARGETS}
    assert isinstance(model.xto_q, nn.Linear) and isinstance(model.proj, nn.Linear)
    assert isinstance(model.attn1.to_out[1], nn.Dropout)


def test_lora_state_dict_has_peft_key_names_and_only_lora_tensors():
    _, theirs, ours = peft_and_ours()
    expected = peft.get_peft_model_state_dict(theirs)
    assert "attn1.to_q.lora_A.default.weight" in theirs.state_dict()  # peft's modules keep the adapter name
    ours_sd = lora.lora_state_dict(ours)
    assert ours_sd.keys() == expected.keys()
    assert "attn2.to_out.0.lora_B.weight" in ours_sd
    assert all(torch.equal(ours_sd[k], expected[k]) for k in expected)


def test_lora_keys_on_a_diffusers_transformer_block_are_diffusers_names():
    attention = pytest.importorskip("diffusers.models.attention")
    block = attention.BasicTransformerBlock(D, 2, 8, cross_attention_dim=12)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS),
                                          copy.deepcopy(block))
    lora.inject(block)  # the default targets are diffusers' attention projections
    assert lora.lora_state_dict(block).keys() == peft.get_peft_model_state_dict(theirs).keys()
    assert "attn2.to_k.lora_A.weight" in lora.lora_state_dict(block)
    assert lora.lora_state_dict(block)["attn2.to_k.lora_A.weight"].shape == (4, 12)


def test_our_transformer_block_gets_the_same_lora_keys_as_diffusers_and_starts_unchanged():
    attention = pytest.importorskip("diffusers.models.attention")
    if not hasattr(blocks, "BasicTransformerBlock"):
        pytest.skip("minildm.nn has no BasicTransformerBlock yet")
    theirs = attention.BasicTransformerBlock(D, 2, 8, cross_attention_dim=12)
    ours = blocks.BasicTransformerBlock(D, heads=2, dim_head=8, context_dim=12)
    x, context = torch.randn(2, 9, D), torch.randn(2, 5, 12)
    before = ours(x, context)
    lora.inject(theirs)
    lora.inject(ours)
    assert lora.lora_state_dict(ours).keys() == lora.lora_state_dict(theirs).keys()
    assert torch.equal(ours(x, context), before)


def test_only_lora_parameters_train_and_at_init_only_B_gets_a_gradient():
    model = Block()
    params = lora.inject(model, TARGETS, r=4, alpha=4.0)
    assert {id(p) for p in params} == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(params) == 2 * 8
    model(torch.randn(2, 5, D)).square().sum().backward()
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert p.grad is None, name
    # dL/dA = scaling B^T (dL/dh) x^T = 0 while B = 0; dL/dB = scaling (dL/dh) (A x)^T != 0
    assert torch.count_nonzero(model.attn1.to_q.lora_A.weight.grad) == 0
    assert torch.count_nonzero(model.attn1.to_q.lora_B.weight.grad) > 0


def test_parameter_counts_are_r_times_in_plus_out_per_layer():
    model = Block()
    total = sum(p.numel() for p in model.parameters())
    lora.inject(model, TARGETS, r=2)
    lora_params = 8 * 2 * (D + D)  # 8 layers, each A (r, in) and B (out, r)
    assert lora.count_parameters(model) == (lora_params, total + lora_params)
    assert lora.trainable_fraction(model) == pytest.approx(lora_params / (total + lora_params))


def test_save_then_load_into_a_fresh_injected_model_gives_the_same_outputs(tmp_path):
    _, _, ours = peft_and_ours()
    path = tmp_path / "adapter.safetensors"
    lora.save(path, ours, {"concept": "star"})
    with safe_open(path, framework="pt") as f:  # the file itself holds peft names, nothing else
        assert set(f.keys()) == set(lora.lora_state_dict(ours))
    fresh = Block()
    fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in ours.state_dict().items() if "lora_" not in k})
    lora.inject(fresh, TARGETS, r=4, alpha=8.0)
    metadata = lora.load(path, fresh)
    assert metadata == {"concept": "star", "lora": {"r": 4, "alpha": 8.0}}
    x = torch.randn(2, 5, D)
    assert torch.equal(fresh(x), ours(x))


def test_load_names_what_does_not_fit(tmp_path):
    _, _, ours = peft_and_ours(r=4, alpha=8.0)
    path = tmp_path / "adapter.safetensors"
    lora.save(path, ours)
    with pytest.raises(ValueError, match="inject"):
        lora.load(path, Block())
    for kwargs, message in [({"targets": TARGETS, "r": 2, "alpha": 8.0}, "r=4"),
                            ({"targets": TARGETS, "r": 4, "alpha": 4.0}, "alpha=8.0"),
                            ({"targets": ["to_q", "to_v"], "r": 4, "alpha": 8.0}, "missing")]:
        model = Block()
        lora.inject(model, **kwargs)
        with pytest.raises(ValueError, match=message):
            lora.load(path, model)
    other = Block()
    lora.inject(other, TARGETS, r=4, alpha=8.0)
    lora.merge(other)
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.load(path, other)
    checkpoint.save(tmp_path / "weights.safetensors", {"w": torch.ones(2)})
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        lora.load(tmp_path / "weights.safetensors", other)
    with pytest.raises(ValueError, match="'lora' key"):
        lora.save(path, ours, {"lora": 1})


def test_remove_puts_back_plain_linears_with_the_pretrained_or_the_merged_weight():
    base, _, ours = peft_and_ours()
    x = torch.randn(2, 5, D)
    adapted = ours(x)
    unmerged = copy.deepcopy(ours)
    lora.remove(unmerged)
    assert not any(isinstance(m, lora.LoRALinear) for m in unmerged.modules())
    assert torch.equal(unmerged(x), base(x))
    lora.merge(ours)
    lora.remove(ours)  # merge + remove = peft's merge_and_unload
    assert isinstance(ours.attn1.to_out[0], nn.Linear)
    assert torch.allclose(ours(x), adapted, atol=1e-6)
    lora.inject(ours, TARGETS)  # injecting again after remove is allowed


def test_a_wrapped_layer_still_answers_like_its_linear():
    base = nn.Linear(D, 12)
    layer = lora.LoRALinear(base, r=2, alpha=2.0)
    assert (layer.in_features, layer.out_features) == (D, 12)
    assert layer.weight is base.weight and layer.bias is base.bias


def test_inject_works_on_minildm_self_attention_when_told_its_output_is_to_out():
    layer = blocks.SelfAttention(D, heads=2, groups=4)
    x = torch.randn(2, D, 3, 3)
    before = layer(x)
    params = lora.inject(layer, ("to_q", "to_k", "to_v", "to_out"), r=2)
    assert len(params) == 8
    assert torch.equal(layer(x), before)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"targets": ["to_qq"]}, ValueError, r"matches no module.*attn1\.to_q"),
    ({"targets": ["to_out"]}, TypeError, "ModuleList"),
    ({"targets": []}, ValueError, "at least one"),
    ({"r": 0}, ValueError, "positive integer"),
    ({"r": 2.5}, ValueError, "positive integer"),
    ({"alpha": 0.0}, ValueError, "alpha"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"dropout": 1.0}, ValueError, "dropout"),
])
def test_inject_rejects_bad_input_and_leaves_the_model_untouched(kwargs, error, message):
    model = Block()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(error, match=message):
        lora.inject(model, **{"targets": TARGETS, **kwargs})
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_injecting_twice_and_using_a_model_without_lora_are_refused():
    model = Block()
    lora.inject(model, TARGETS)
    with pytest.raises(RuntimeError, match="remove"):
        lora.inject(model, TARGETS)
    for fn in (lora.merge, lora.unmerge, lora.lora_state_dict):
        with pytest.raises(ValueError, match="inject"):
            fn(Block())
    with pytest.raises(TypeError, match="nn.Linear"):
        lora.LoRALinear(nn.Conv2d(3, 3, 1), r=2, alpha=2.0)
    with pytest.raises(ValueError, match="finite"):
        lora.set_scale(model, float("nan"))


# --- convolutions (peft's Conv2d LoRA) --------------------------------------------------------


class ConvNet(nn.Module):
    """A 3x3 convolution with padding, a strided 3x3 one and a 1x1 one, as in a U-Net's ResBlocks."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(8, 5, 1)

    def forward(self, x):  # (B, 3, H, W) -> (B, 5, H/2, W/2)
        return self.skip(F.silu(self.down(F.silu(self.conv1(x)))))


CONV_TARGETS = ["conv1", "down", "skip"]


def peft_and_ours_conv(r=3, alpha=6.0):
    base = ConvNet()
    theirs = peft.inject_adapter_in_model(
        peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=CONV_TARGETS, init_lora_weights=False),
        copy.deepcopy(base))
    ours = copy.deepcopy(base)
    lora.inject(ours, CONV_TARGETS, r=r, alpha=alpha)
    with torch.no_grad():
        for key, value in peft.get_peft_model_state_dict(theirs).items():
            ours.get_parameter(key).copy_(value)
    return base, theirs, ours


def test_conv_lora_matches_peft_forward_delta_weight_and_merge():
    base, theirs, ours = peft_and_ours_conv()
    assert all(isinstance(ours.get_submodule(n), lora.LoRAConv2d) for n in CONV_TARGETS)
    assert set(lora.lora_state_dict(ours)) == set(peft.get_peft_model_state_dict(theirs))
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    for name in CONV_TARGETS:
        ours_layer, their_layer = ours.get_submodule(name), theirs.get_submodule(name)
        assert torch.allclose(ours_layer.delta_weight(), their_layer.get_delta_weight("default"), atol=1e-6)
    adapted = ours(x)
    lora.merge(ours)
    for layer in theirs.modules():
        if isinstance(layer, peft.tuners.lora.LoraLayer):
            layer.merge()
    for name in CONV_TARGETS:
        assert torch.allclose(ours.get_submodule(name).base_layer.weight,
                              theirs.get_submodule(name).base_layer.weight, atol=1e-6)
    assert torch.allclose(ours(x), adapted, atol=1e-5)
    lora.unmerge(ours)
    for name in CONV_TARGETS:
        assert torch.allclose(ours.get_submodule(name).base_layer.weight, base.get_submodule(name).weight, atol=1e-6)


def test_conv_delta_weight_is_the_kernel_of_b_after_a():
    # B (1x1) after A (k x k) is one k x k convolution: its kernel, found by convolving a unit impulse
    layer = lora.LoRAConv2d(nn.Conv2d(4, 6, 3, padding=1), r=2, alpha=3.0)
    nn.init.normal_(layer.lora_B.weight)
    impulses = torch.zeros(4, 4, 3, 3)
    impulses[range(4), range(4), 1, 1] = 1.0  # input channel i: a single 1 at the centre
    with torch.no_grad():
        response = layer.lora_B(layer.lora_A(impulses)) * 1.5  # (in, out, 3, 3): the kernel, flipped
    assert torch.allclose(layer.delta_weight(), response.permute(1, 0, 2, 3).flip(-1, -2), atol=1e-6)


def test_conv_lora_starts_equal_to_its_base_and_counts_r_times_in_k_k_plus_out():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = lora.LoRAConv2d(conv, r=2, alpha=2.0)
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(layer(x), conv(x))
    assert (layer.in_channels, layer.out_channels) == (4, 6)
    trainable, total = lora.count_parameters(layer)
    assert trainable == 2 * 4 * 3 * 3 + 6 * 2 and total == trainable + 6 * 4 * 3 * 3 + 6


def test_conv_lora_refuses_grouped_or_dilated_convolutions():
    with pytest.raises(ValueError, match="groups=2"):
        lora.LoRAConv2d(nn.Conv2d(4, 4, 3, groups=2), r=2, alpha=2.0)
    with pytest.raises(ValueError, match="dilation"):
        lora.LoRAConv2d(nn.Conv2d(4, 4, 3, dilation=2), r=2, alpha=2.0)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        lora.LoRAConv2d(nn.Linear(4, 4), r=2, alpha=2.0)
