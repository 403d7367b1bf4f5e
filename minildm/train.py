"""One plain training loop, shared by every lesson.

    repeat: draw a batch -> loss_fn(model, batch, generator) -> backward -> clip -> AdamW step -> EMA

It knows nothing of diffusion: the lesson's ``loss_fn`` is the model-specific part (for a
DDPM, Algorithm 1 of Ho et al. 2020: draw t and eps, return ||eps - eps_theta(x_t, t)||^2).
What the loop adds is what every real run needs:

* AdamW (Loshchilov & Hutter 2019) with gradient-norm clipping;
* an exponential moving average of the weights (EMA), which diffusion models sample from;
* mixed precision (autocast + GradScaler) on CUDA;
* a NaN/Inf guard that stops at the first bad loss, before it reaches the weights;
* atomic safetensors checkpoints and an exact resume: one CPU ``torch.Generator`` (seeded by
  ``seed``) draws every batch and is handed to ``loss_fn`` for its noise, and its state, torch's
  global RNG (dropout) and the optimizer are saved, so 10 steps + resume to 20 gives the same
  numbers as 20 steps straight (bit-exact on the CPU);
* DDP under ``torchrun``: every rank draws the same indices from the shared generator and
  trains on its own slice, so rank 0's checkpoint describes all ranks.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from minildm import checkpoint as ckpt
from minildm.config import device as default_device

# the settings that must not change between a run and its resume
RESUME_SETTINGS = ("batch_size", "lr", "weight_decay", "betas", "ema_decay", "grad_clip", "seed", "world_size")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; training stopped before the bad step touched the weights."""

    def __init__(self, step: int, loss: float, checkpoint: Path | None):
        self.step, self.loss = step, loss
        kept = f"; the last checkpoint in {checkpoint} is untouched" if checkpoint else ""
        super().__init__(f"loss became {loss} at step {step}; training stopped without saving{kept}. "
                         "Try a lower lr, grad_clip, or check the data for NaNs.")


@dataclass
class TrainResult:
    """What ``fit`` returns; the trained model itself is the one passed in."""

    losses: list[float]  # the loss at every step since step 1, including steps before a resume
    step: int  # optimizer steps done in total
    seconds: float  # training time in total, including runs before a resume
    ema: nn.Module | None  # the EMA copy of the model (eval mode), if ema_decay was given
    images_per_second: float  # training examples per second in this call, all ranks together


def fit(model: nn.Module, loss_fn: Callable[[nn.Module, Tensor | tuple, torch.Generator], Tensor],
        data: Tensor | tuple[Tensor, ...], *, steps: int, batch_size: int, lr: float = 1e-3,
        weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), ema_decay: float | None = None,
        grad_clip: float | None = 1.0, seed: int = 0, device: torch.device | str | None = None,
        checkpoint: str | Path | None = None, checkpoint_every: int | None = None, resume: bool = False,
        progress: bool = True, log_every: int = 10) -> TrainResult:
    """Train ``model`` in place for ``steps`` optimizer steps; return the loss curve and the EMA.

    data: a Tensor or a tuple of Tensors sharing the first dimension (examples); batches of
        ``batch_size`` distinct examples are drawn at random each step and moved to ``device``.
    loss_fn(model, batch, generator): a scalar loss; ``batch`` has the structure of ``data``;
        draw noise and timesteps from ``generator`` (a CPU generator) and move them to the
        batch's device.
    checkpoint: file written every ``checkpoint_every`` steps and at the end. With
        ``resume=True`` an existing file is continued from its step up to ``steps``.
    log_every: steps between updates of the progress bar's loss (a mean over those steps).

    Under ``torchrun`` (after ``dist.init_process_group``; on GPUs also
    ``torch.cuda.set_device(local_rank)``) the model is wrapped in DDP and ``loss_fn`` receives
    the wrapper (its ``.module`` is the model); ``batch_size`` is per rank, and only rank 0
    writes checkpoints and shows progress.
    """
    data = _check_data(data)
    n = len(data[0])
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("log_every", log_every, 1)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(model, batch, generator)")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if ema_decay is not None and not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip}")
    if checkpoint_every is not None:
        _check_int("checkpoint_every", checkpoint_every, 1)
        if checkpoint is None:
            raise ValueError("checkpoint_every needs a checkpoint path to write to")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs a checkpoint path to resume from")

    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if batch_size > n // world_size:
        raise ValueError(f"batch_size must be at most the number of examples ({n}) / ranks ({world_size}) "
                         f"= {n // world_size}, got {batch_size}")
    device = torch.device(device) if device is not None else default_device()
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    settings = {"batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "betas": list(betas),
                "ema_decay": ema_decay, "grad_clip": grad_clip, "seed": seed, "world_size": world_size}

    model.to(device).train()
    net = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if ema_decay is not None else None
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    step, seconds_before = 0, 0.0

    if resume and checkpoint.exists():
        tensors, meta = ckpt.load(checkpoint)
        changed = [f"{k}={meta['settings'][k]!r} (now {settings[k]!r})" for k in RESUME_SETTINGS
                   if meta["settings"][k] != settings[k]]
        if changed:
            raise ValueError(f"cannot resume from {checkpoint}: it was written with {', '.join(changed)}; "
                             "use the same settings, or resume=False to start afresh")
        if meta["step"] > steps:
            raise ValueError(f"steps={steps} is fewer than the {meta['step']} already done in {checkpoint}")
        ckpt.restore_module(model, tensors, "model.")
        ckpt.restore_optimizer(optimizer, tensors, meta["optimizer"], "optimizer.")
        if ema is not None:
            ckpt.restore_module(ema, tensors, "ema.")
        if use_amp and meta["scaler"]:
            scaler.load_state_dict(meta["scaler"])
        ckpt.restore_rng(generator, tensors)
        losses = tensors["losses"].tolist()
        step, seconds_before = meta["step"], meta["seconds"]

    start, first_step = time.perf_counter(), step

    def save() -> None:
        if rank != 0:
            return
        tensors = {**ckpt.flatten_module(model, "model."), **ckpt.rng_states(generator),
                   "losses": torch.tensor(losses, dtype=torch.float64)}
        optimizer_tensors, optimizer_meta = ckpt.flatten_optimizer(optimizer, "optimizer.")
        tensors.update(optimizer_tensors)
        if ema is not None:
            tensors.update(ckpt.flatten_module(ema, "ema."))
        meta = {"step": step, "seconds": seconds_before + time.perf_counter() - start, "settings": settings,
                "optimizer": optimizer_meta, "scaler": scaler.state_dict() if use_amp else None}
        ckpt.save(checkpoint, tensors, meta)

    with tqdm(total=steps, initial=step, disable=not progress or rank != 0, desc="train", unit="step") as bar:
        while step < steps:
            # the same indices on every rank; each rank trains on its own slice of them
            index = torch.randperm(n, generator=generator)[: batch_size * world_size]
            index = index[rank * batch_size:(rank + 1) * batch_size]  # (batch_size,)
            batch = tuple(x[index].to(device, non_blocking=True) for x in data)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                loss = loss_fn(net, batch[0] if len(batch) == 1 else batch, generator)
            if not isinstance(loss, Tensor) or loss.ndim != 0:
                raise ValueError(f"loss_fn must return a scalar tensor, got "
                                 f"{tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__}")
            reported = loss.detach().float()
            if world_size > 1:  # every rank must agree on the value, or they would stop apart
                dist.all_reduce(reported)
                reported /= world_size
            value = reported.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(step + 1, value, checkpoint)

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
                # g <- g * min(1, grad_clip / ||g||), ||g|| over all parameters together
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                # ema <- decay * ema + (1 - decay) * theta
                with torch.no_grad():
                    for e, p in zip(ema.parameters(), model.parameters()):
                        e.lerp_(p, 1 - ema_decay)
                    for e, b in zip(ema.buffers(), model.buffers()):
                        e.copy_(b)

            step += 1
            losses.append(value)
            bar.update()
            if step % log_every == 0 or step == steps:
                bar.set_postfix(loss=f"{sum(losses[-log_every:]) / len(losses[-log_every:]):.4g}")
            if checkpoint is not None and (step == steps or (checkpoint_every and step % checkpoint_every == 0)):
                save()

    seconds = time.perf_counter() - start
    return TrainResult(losses=losses, step=step, seconds=seconds_before + seconds, ema=ema,
                       images_per_second=(step - first_step) * batch_size * world_size / max(seconds, 1e-9))


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")


def _check_data(data) -> tuple[Tensor, ...]:
    """``data`` as a non-empty tuple of Tensors with one shared, non-zero first dimension."""
    tensors = (data,) if isinstance(data, Tensor) else data
    if not isinstance(tensors, tuple) or not tensors or not all(isinstance(x, Tensor) for x in tensors):
        raise TypeError("data must be a Tensor or a non-empty tuple of Tensors")
    if any(x.ndim == 0 for x in tensors):
        raise ValueError("data tensors need a first dimension indexing the examples")
    lengths = [len(x) for x in tensors]
    if len(set(lengths)) != 1:
        raise ValueError(f"data tensors must share their first dimension, got lengths {lengths}")
    if lengths[0] == 0:
        raise ValueError("data holds no examples")
    return tensors
