"""LoRA: fine-tune a frozen network by learning a low-rank change to some of its weights.

Hu et al. (2021, "LoRA: Low-Rank Adaptation of Large Language Models") freeze a pretrained
weight W (out, in) and learn its change as a product of two thin matrices,

    W' = W + (alpha / r) B A,      A: (r, in),  B: (out, r),  r << min(in, out),

so a layer trains r (in + out) numbers instead of in * out. A starts Kaiming-uniform and B at
zero (Hu et al., section 4.1), so at the first step W' = W: the adapted network is exactly
the pretrained one, and training moves it away only as far as the data asks. alpha / r keeps
the size of the update roughly independent of r, so alpha need not be retuned when r changes.
Because B A is just a matrix, it can be added into W after training ("merging"): the adapted
layer then costs nothing extra at inference, and subtracting it again gives W back.

A convolution (out, in, k, k) gets the same treatment as peft's ``Conv2d`` LoRA: A is a k x k
convolution from in to r channels, B a 1 x 1 convolution from r to out, so B A is again a
convolution of rank r and delta W[o, i] = (alpha / r) sum_j B[o, j] A[j, i] (``LoRAConv2d``).

Names follow peft and diffusers (``lora_A``, ``lora_B``, ``base_layer``, ``scaling``), so an
adapter's tensors are called ``…attn1.to_q.lora_A.weight`` exactly as in the state dict peft's
``get_peft_model_state_dict`` returns (peft's own modules hold one ``lora_A`` per adapter name,
``…lora_A.default.weight``, and that function drops the ``default``).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from minildm import checkpoint

__all__ = ["LoRALinear", "LoRAConv2d", "inject", "merge", "unmerge", "set_scale", "lora_state_dict", "save", "load",
           "remove", "count_parameters", "trainable_fraction"]

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _check_hyperparameters(r, alpha, dropout) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r (the rank) must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number (the scale is alpha / r), got {alpha!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: h = W x + b + (alpha / r) B A x.

    (..., in) -> (..., out). ``base`` is frozen (requires_grad False) and kept as
    ``base_layer``; ``lora_A`` (in -> r) and ``lora_B`` (r -> out) are bias-free linears, so
    their weights are A (r, in) and B (out, r). ``dropout`` applies to the input of the
    low-rank path only, as in peft.
    """

    base_type = nn.Linear

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, self.base_type):
            raise TypeError(f"base must be an nn.{self.base_type.__name__}, got {type(base).__name__}")
        _check_hyperparameters(r, alpha, dropout)
        self.base_layer = base.requires_grad_(False)
        self.r, self.alpha = r, float(alpha)
        self.lora_A, self.lora_B = self._factors(base, r)
        # A ~ U(+-sqrt(6 / ((1 + a^2) in))) with a = sqrt(5): nn.Linear's own default, as peft and Hu et al.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        # B = 0, so B A = 0 and the wrapped layer starts out equal to the base layer
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.set_scale(1.0)

    def _factors(self, base: nn.Linear, r: int) -> tuple[nn.Linear, nn.Linear]:
        """(A: in -> r, B: r -> out), bias-free, on the base layer's device and dtype."""
        self.in_features, self.out_features = base.in_features, base.out_features  # code that reads them still works
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        return (nn.Linear(base.in_features, r, bias=False, **factory),   # weight A: (r, in)
                nn.Linear(r, base.out_features, bias=False, **factory))  # weight B: (out, r)

    @property
    def weight(self) -> Tensor:
        """The base layer's W (out, in), as peft's wrapped layers expose it (W' once merged)."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def set_scale(self, multiplier: float) -> None:
        """scaling = multiplier * alpha / r: 1 is the trained adapter, 0 switches it off.

        This is the "LoRA scale" of diffusers (``cross_attention_kwargs={"scale": s}``) and
        peft's ``set_scale``. Unmerge before changing it: a merged W holds the old scale.
        """
        if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier):
            raise ValueError(f"multiplier must be a finite number, got {multiplier!r}")
        if self.merged:
            raise RuntimeError("cannot change the scale of a merged LoRA layer: unmerge it first")
        self.scaling = multiplier * self.alpha / self.r

    def delta_weight(self) -> Tensor:
        """The change LoRA makes to W: (alpha / r) B A, of shape (out, in)."""
        # delta W = scaling * B A: (out, r) @ (r, in) -> (out, in)
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + delta W: the base layer alone now computes the adapted output."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged")
        self.base_layer.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - delta W: back to the pretrained weight (up to float rounding)."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        self.base_layer.weight -= self.delta_weight()
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if self.merged:
            return self.base_layer(x)  # W' x + b, with delta W already inside W'
        # h = W x + b + (alpha / r) B A dropout(x)
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, merged={self.merged}"


class LoRAConv2d(LoRALinear):
    """A frozen ``nn.Conv2d`` plus a trainable rank-r update, as peft's Conv2d LoRA.

    (B, in, H, W) -> (B, out, H', W'). ``lora_A`` is a convolution like the base one (same kernel,
    stride and padding) from in to r channels, ``lora_B`` a 1 x 1 convolution from r to out, so
    their weights are A (r, in, k, k) and B (out, r, 1, 1), and h = conv(x, W) + b + (alpha / r)
    B(A(x)). Everything else (scale, merge, unmerge, saving) is ``LoRALinear``'s.
    """

    base_type = nn.Conv2d

    def _factors(self, base: nn.Conv2d, r: int) -> tuple[nn.Conv2d, nn.Conv2d]:
        if base.groups != 1 or base.dilation != (1, 1) or base.padding_mode != "zeros":
            raise ValueError(f"LoRAConv2d wraps plain convolutions (groups 1, dilation 1, zero padding), got "
                             f"groups={base.groups}, dilation={base.dilation}, padding_mode={base.padding_mode!r}")
        self.in_channels, self.out_channels = base.in_channels, base.out_channels
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        return (nn.Conv2d(base.in_channels, r, base.kernel_size, base.stride, base.padding, bias=False,
                          **factory),  # weight A: (r, in, k, k)
                nn.Conv2d(r, base.out_channels, 1, bias=False, **factory))  # weight B: (out, r, 1, 1)

    def delta_weight(self) -> Tensor:
        """The change LoRA makes to the kernel: delta W[o, i] = (alpha / r) sum_j B[o, j] A[j, i], (out, in, k, k)."""
        return torch.einsum("oj,jikl->oikl", self.lora_B.weight[:, :, 0, 0], self.lora_A.weight) * self.scaling


# --- a whole model ----------------------------------------------------------------------


def _matches(name: str, target: str) -> bool:
    """Does the qualified module name end with ``target``, whole dotted components only?

    "attn1.to_out.0" matches "to_out.0"; "xto_q" does not match "to_q" (peft's rule too).
    """
    return name == target or name.endswith("." + target)


def _lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def _require_lora(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    layers = _lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers: call minildm.lora.inject(model, ...) first")
    return layers


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule called ``name`` (e.g. "attn1.to_out.0") was."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


WRAPPERS = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}  # the layer types inject wraps, and how


def _wrapper(module: nn.Module) -> type[LoRALinear] | None:
    """The LoRA layer class that wraps ``module``, or None if LoRA cannot wrap it."""
    return next((wrapper for kind, wrapper in WRAPPERS.items() if isinstance(module, kind)), None)


def inject(model: nn.Module, targets=DEFAULT_TARGETS, r: int = 4, alpha: float = 4.0,
           dropout: float = 0.0) -> list[nn.Parameter]:
    """Wrap every ``nn.Linear`` (``nn.Conv2d``) whose name ends with one of ``targets`` in a
    ``LoRALinear`` (``LoRAConv2d``).

    Freezes every other parameter of ``model`` and returns the LoRA parameters (A then B for
    each layer, in module order), ready for an optimizer. The default targets are the query,
    key, value and output projections of diffusers-style attention (``to_out`` is a list whose
    item 0 is the Linear). Each target must match at least one module, so a typo fails loudly.
    """
    if isinstance(targets, str):
        targets = (targets,)
    if not targets:
        raise ValueError("targets must name at least one module, e.g. ('to_q', 'to_v')")
    _check_hyperparameters(r, alpha, dropout)
    if _lora_layers(model):
        raise RuntimeError("model already has LoRA layers: call minildm.lora.remove(model) before injecting again")
    modules = dict(model.named_modules())
    linears = [name for name, m in modules.items() if _wrapper(m) is not None]
    chosen = []
    for target in targets:
        found = [name for name in modules if _matches(name, target)]
        if not found:
            raise ValueError(f"target {target!r} matches no module of the model; its Linear and Conv2d layers include "
                             f"{linears[:6]}{' ...' if len(linears) > 6 else ''}")
        for name in found:
            if _wrapper(modules[name]) is None:
                raise TypeError(f"target {target!r} matches {name!r}, a {type(modules[name]).__name__}; "
                                f"LoRA wraps nn.Linear and nn.Conv2d layers only")
        chosen += [name for name in found if name not in chosen]
    model.requires_grad_(False)
    for name in chosen:
        _replace(model, name, _wrapper(modules[name])(modules[name], r, alpha, dropout))
    return [p for _, layer in _lora_layers(model) for p in (layer.lora_A.weight, layer.lora_B.weight)]


def merge(model: nn.Module) -> None:
    """Add every LoRA layer's delta W into its base weight (W <- W + (alpha / r) B A)."""
    for _, layer in _require_lora(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Undo ``merge``: subtract every LoRA layer's delta W from its base weight."""
    for _, layer in _require_lora(model):
        layer.unmerge()


def set_scale(model: nn.Module, multiplier: float) -> None:
    """Every LoRA layer's scaling becomes multiplier * alpha / r (0: the base model, 1: the adapter)."""
    for _, layer in _require_lora(model):
        layer.set_scale(multiplier)


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the LoRA tensors, under peft / diffusers names: ``{"attn1.to_q.lora_A.weight": A, ...}``."""
    tensors = {}
    for name, layer in _require_lora(model):
        tensors[f"{name}.lora_A.weight"] = layer.lora_A.weight.detach()  # (r, in)
        tensors[f"{name}.lora_B.weight"] = layer.lora_B.weight.detach()  # (out, r)
    return tensors


def _rank_and_alpha(model: nn.Module) -> tuple[int, float]:
    """The (r, alpha) shared by all LoRA layers of ``model`` (``inject`` gives them all the same)."""
    pairs = {(layer.r, layer.alpha) for _, layer in _require_lora(model)}
    if len(pairs) > 1:
        raise ValueError(f"the model's LoRA layers differ in (r, alpha): {sorted(pairs)}; "
                         "an adapter file holds one r and one alpha")
    return pairs.pop()


def save(path: str | os.PathLike, model: nn.Module, metadata: dict | None = None) -> None:
    """Write the model's LoRA tensors to a safetensors file (atomically, via ``minildm.checkpoint``).

    The file's metadata holds ``metadata`` plus ``{"lora": {"r": r, "alpha": alpha}}``: alpha is
    not in the tensors, yet the adapter means nothing without it.
    """
    if metadata is not None and "lora" in metadata:
        raise ValueError("metadata must not have a 'lora' key: save writes r and alpha there")
    r, alpha = _rank_and_alpha(model)
    checkpoint.save(path, lora_state_dict(model), {**(metadata or {}), "lora": {"r": r, "alpha": alpha}})


def load(path: str | os.PathLike, model: nn.Module) -> dict:
    """Load an adapter written by ``save`` into a model already injected with the same r and alpha.

    Checks that the file's r, alpha and tensor names match the model's LoRA layers, and
    returns the file's metadata. The model must not be merged (the merged W holds the old B A).
    """
    tensors, metadata = checkpoint.load(path)
    if "lora" not in metadata:
        raise ValueError(f"{path} is a minildm checkpoint but not a LoRA adapter (no 'lora' metadata)")
    r, alpha = metadata["lora"]["r"], metadata["lora"]["alpha"]
    if not _lora_layers(model):
        raise ValueError(f"model has no LoRA layers: call minildm.lora.inject(model, r={r}, alpha={alpha}) "
                         "with the targets the adapter was trained on, then load")
    if (r, alpha) != _rank_and_alpha(model):
        raise ValueError(f"{path} holds an adapter with r={r}, alpha={alpha}, but the model's LoRA layers have "
                         f"(r, alpha) = {_rank_and_alpha(model)}: inject with r={r}, alpha={alpha}")
    expected = lora_state_dict(model)
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model's LoRA layers: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]} (were the same targets injected?)")
    for key, value in tensors.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(expected[key].shape)}")
    for name, layer in _lora_layers(model):
        if layer.merged:
            raise RuntimeError(f"LoRA layer {name!r} is merged: unmerge the model before loading an adapter")
    with torch.no_grad():
        for key, value in tensors.items():
            model.get_parameter(key).copy_(value)
    return metadata


def remove(model: nn.Module) -> None:
    """Put the plain ``nn.Linear`` back in place of every LoRA layer, dropping A and B.

    A merged layer leaves its merged weight behind (peft's ``merge_and_unload``); an unmerged
    one leaves the pretrained W. Parameters stay frozen as ``inject`` left them.
    """
    for name, layer in _require_lora(model):
        _replace(model, name, layer.base_layer)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) number of parameters, e.g. to compare LoRA with full fine-tuning."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / all parameters (LoRA's included in both)."""
    trainable, total = count_parameters(model)
    return trainable / total
