"""Latent vs pixel diffusion at 32x32: training throughput and sampling time, side by side.

The same U-Net architecture as shapes-ldm (``recipes.SHAPES_LDM_CONFIG``: spatial transformers
cross-attending to a (B, L, 64) text context) is built twice:

- latent: on shapes-vae's 8x8x4 latents (in_channels 4), as shapes-ldm trains;
- pixel:  on 32x32x3 images (in_channels 3), the same widths, so the parameter counts match to
          within the first and last convolution (printed).

Training: forward + backward + AdamW on a batch of random inputs with a random-timestep MSE
loss; steps alternate between the two models so both see the same machine load. The latent
model's cost per image is given twice: with latents encoded once before training (what the
recipe does: the autoencoder is frozen) and with the encoder's forward pass paid per image.
Sampling: ``--steps`` DDIM steps with classifier-free guidance (two U-Net calls per step) for a
batch of ``--n``, plus one decode for the latent model. Printed: images/s, seconds and the
ratios latent / pixel. No checkpoint is needed: random weights cost the same as trained ones.

    python bench/latent_vs_pixel.py [--batch 64] [--rounds 6] [--n 64] [--steps 50] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from minildm import autoencoders, recipes, unet

CONTEXT_LENGTH, CONTEXT_DIM = 21, recipes.SHAPES_LDM_CONFIG["context_dim"]


def build(in_channels: int) -> unet.UNet:
    """shapes-ldm's U-Net with ``in_channels`` inputs and outputs."""
    config = {k: v for k, v in recipes.SHAPES_LDM_CONFIG.items()
              if k not in ("size", "schedule", "T", "caption_dropout", "vae", "text_encoder")}
    return unet.UNet(**{**config, "in_channels": in_channels})


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step(model, opt, x, context) -> float:
    """Seconds for one forward + backward + AdamW step on x (B, C, H, W)."""
    start = time.perf_counter()
    t = torch.randint(0, 1000, (len(x),), device=x.device)
    loss = F.mse_loss(model(x, t, context=context), torch.randn_like(x))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def encode_seconds(vae, images) -> float:
    start = time.perf_counter()
    vae.encode(images).mode()
    return time.perf_counter() - start


@torch.no_grad()
def sample_seconds(model, shape, context, steps: int, decode=None) -> float:
    """DDIM-like loop cost: 2 U-Net calls per step (CFG) on ``shape``, then an optional decode."""
    x = torch.randn(shape, device=context.device)
    start = time.perf_counter()
    for t in torch.linspace(999, 0, steps).long().tolist():
        tt = torch.full((shape[0],), t, device=x.device)
        eps = model(x, tt, context=context) + model(x, tt, context=context)
        x = x - 0.01 * eps
    if decode is not None:
        decode(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6, help="timed training steps per model (after 1 warm-up)")
    parser.add_argument("--n", type=int, default=64, help="samples per sampling run")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps per sampling run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    latent, pixel = build(4).to(device), build(3).to(device)
    vae = autoencoders.AutoencoderKL(**recipes.SHAPES_VAE_CONFIG).to(device).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(f"parameters: latent U-Net {count(latent) / 1e6:.3f}M, pixel U-Net {count(pixel) / 1e6:.3f}M "
          f"(ratio {count(latent) / count(pixel):.3f}); autoencoder {count(vae) / 1e6:.3f}M")

    b = args.batch
    context = torch.randn(b, CONTEXT_LENGTH, CONTEXT_DIM, device=device)
    images, latents = torch.randn(b, 3, 32, 32, device=device), torch.randn(b, 4, 8, 8, device=device)
    opts = {m: torch.optim.AdamW(m.parameters(), 1e-4) for m in (latent, pixel)}
    times = {"latent": [], "pixel": [], "encode": []}
    for r in range(args.rounds + 1):  # round 0 warms up
        lt = train_step(latent, opts[latent], latents, context)
        pt = train_step(pixel, opts[pixel], images, context)
        et = encode_seconds(vae, images)
        if r:
            times["latent"].append(lt), times["pixel"].append(pt), times["encode"].append(et)
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {"latent": b / med["latent"], "latent + encoder": b / (med["latent"] + med["encode"]),
           "pixel": b / med["pixel"]}
    print(f"\ntraining, batch {b}, median of {args.rounds} steps each (images/s):")
    for name, value in ips.items():
        print(f"  {name:18s} {value:8.1f}")
    print(f"  latent / pixel = {ips['latent'] / ips['pixel']:.2f}x   "
          f"(encoder paid per image: {ips['latent + encoder'] / ips['pixel']:.2f}x)")

    n = args.n
    context = torch.randn(n, CONTEXT_LENGTH, CONTEXT_DIM, device=device)
    latent.eval(), pixel.eval()
    ls = sample_seconds(latent, (n, 4, 8, 8), context, args.steps, decode=vae.decode)
    ps = sample_seconds(pixel, (n, 3, 32, 32), context, args.steps)
    print(f"\nsampling {n} images, {args.steps} steps with guidance (2 U-Net calls per step):")
    print(f"  latent (+ 1 decode) {ls:7.2f} s\n  pixel               {ps:7.2f} s\n  pixel / latent = {ps / ls:.2f}x")


if __name__ == "__main__":
    main()
