"""U-Net throughput, in two parts: training (minildm vs diffusers) and sampling (DDIM-25 vs DDPM-1000).

Part "training" (needs diffusers, the ``dev`` extra): minildm's UNet vs diffusers' UNet2DModel,
side by side. Both networks get the same widths (base, 2 base, 2 base), attention at the middle
level and in the middle block, the same head count, GroupNorm groups and time-embedding width; minildm uses
two residual blocks per level on each side (one skip per level), diffusers one per down level
and two per up level (one skip per block), which is the closest parameter count it offers. Each
step is forward + backward + AdamW on a random batch, with a random-timestep MSE loss against
random noise; the script prints both parameter counts, forward MFLOP per image, images/s for
each model and size, minildm / diffusers (above 1 means we are faster) and that ratio times
the FLOP ratio (above 1 means we do more work per second). Steps alternate between the two models so
both see the same machine load.

Part "sampling": the shipped digits-ddpm draws the same ``--n`` samples (classes 0..9 in turn,
guidance scale 1, the same x_T) three times: with DDIM (Song et al. 2021; 25 leading steps) at
eta = 0 (deterministic) and at eta = 0.5 (fresh noise of half DDPM's standard deviation), and
with DDPM's full ancestral chain (Ho et al. 2020, Algorithm 2; all 1000 steps), all three with
x0_hat clipped to [-1, 1] as in Ho et al.'s code. It prints the seconds of each and DDPM / DDIM
(the speed-up), the FID of each against the 1,797 real digits (train + test) in the shipped
digits-classifier's features and DDIM / DDPM (above 1 means DDIM's samples are further from the
data), and the classifier's agreement with the class asked for. At the default n = 500 the
DDPM chain is 500,000 image-steps: 10 to 20 minutes on 2 CPU cores (2-3 ms per image-step
measured on one busy core), far less on a GPU.

    python bench/unet_throughput.py [--part training|sampling|all] [--batch 64] [--sizes 16 32] [--base 32]
                                    [--steps 5] [--n 500] [--device cpu|cuda|mps]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from minildm import config, data, metrics, pretrained, recipes, samplers
from minildm.unet import UNet

SAMPLERS = {"DDIM (eta 0)": {"sampler": "ddim", "steps": 25, "eta": 0.0},
            "DDIM (eta 0.5)": {"sampler": "ddim", "steps": 25, "eta": 0.5},
            "DDPM (ancestral)": {"sampler": "ddpm", "steps": 1000, "eta": 0.0}}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step(model, call, opt, x, t, noise) -> float:
    """Seconds for one forward + backward + AdamW step."""
    start = time.perf_counter()
    loss = F.mse_loss(call(model, x, t), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def forward_flops(call, model, x: torch.Tensor, t: torch.Tensor) -> float:
    """Floating-point operations of one forward pass per image, counted by torch's FlopCounterMode."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        call(model, x, t)
    return counter.get_total_flops() / x.shape[0]


def training(args: argparse.Namespace) -> None:
    """Training images/s of minildm's UNet and diffusers' UNet2DModel, alternating steps."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    b = args.base
    ours = UNet(in_channels=3, base=b, mults=(1, 2, 2), attn_levels=(1,), num_res_blocks=2, heads=4, groups=8)
    theirs = UNet2DModel(
        in_channels=3, out_channels=3, block_out_channels=(b, 2 * b, 2 * b), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2 * b // 4, norm_num_groups=8,
    )
    models = {
        "minildm": (ours, lambda m, x, t: m(x, t)),
        "diffusers": (theirs, lambda m, x, t: m(x, t).sample),
    }
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, (m, _) in models.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"parameters: minildm {count(ours):,}  diffusers {count(theirs):,}  "
          f"(ratio {count(ours) / count(theirs):.2f})")
    print(f"{'size':>6}{'minildm MFLOP':>15}{'diffusers MFLOP':>17}{'minildm img/s':>15}{'diffusers img/s':>17}"
          f"{'ratio':>7}{'ratio per FLOP':>16}")
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size)
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (args.batch,))
        # the two networks do not cost the same per image: compare work done per second too
        flops = {name: forward_flops(call, model, x[:2], t[:2]) for name, (model, call) in models.items()}
        times = {name: [] for name in models}
        for step in range(args.steps + 1):
            for name, (model, call) in models.items():
                seconds = train_step(model, call, opts[name], x, t, noise)
                if step > 0:  # the first step of each is a warm-up
                    times[name].append(seconds)
        rate = {name: args.batch / statistics.median(ts) for name, ts in times.items()}
        ratio = rate["minildm"] / rate["diffusers"]
        print(f"{size:>6}{flops['minildm'] / 1e6:>15.1f}{flops['diffusers'] / 1e6:>17.1f}{rate['minildm']:>15.1f}"
              f"{rate['diffusers']:>17.1f}{ratio:>7.2f}{ratio * flops['minildm'] / flops['diffusers']:>16.2f}")


def timed_samples(model, schedule, x_T: torch.Tensor, y: torch.Tensor, sampler: str, steps: int, eta: float):
    """(samples on the CPU in [-1, 1], seconds): ``steps`` steps of ``sampler`` from x_T for classes y."""
    start = time.perf_counter()
    x = samplers.sample(model, schedule, tuple(x_T.shape), sampler=sampler, steps=steps, eta=eta, clip=1.0,
                        generator=torch.Generator(x_T.device).manual_seed(1), model_kwargs={"y": y}, x_T=x_T)
    x = x.cpu()  # waits for an accelerator to finish
    return x.clamp(-1, 1), time.perf_counter() - start


def sampling(args: argparse.Namespace) -> None:
    """DDIM-25 vs DDPM-1000 on the shipped digits-ddpm: seconds, FID and agreement, with their ratios."""
    device = torch.device(args.device) if args.device else config.device()
    model = pretrained.load("digits-ddpm", device=device, train_if_missing=False)
    judge = pretrained.load("digits-classifier", device=device, train_if_missing=False)
    schedule = recipes.noise_schedule("digits-ddpm")
    real, _ = data.digits(recipes.DIGITS_CONFIG["size"])  # (1797, 1, 16, 16): train + test
    y = (torch.arange(args.n) % 10).to(device)  # (n,) classes 0..9 in turn
    x_T = torch.randn(args.n, 1, 16, 16, generator=torch.Generator().manual_seed(0)).to(device)  # (n, 1, 16, 16)
    with torch.no_grad():  # warm-up: the first call pays for allocations and kernel selection
        model(x_T, torch.full((args.n,), 500, device=device), y=y).cpu()

    print(f"sampling: digits-ddpm, n = {args.n} samples (classes 0..9 in turn, guidance scale 1), device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; FID against {len(real)} real digits"
          + (" (fewer than n: FID is noisier)" if len(real) < args.n else ""))
    print(f"{'sampler':<18}{'steps':>6}{'seconds':>10}{'FID':>9}{'agreement':>11}")
    results = {}
    for name, how in SAMPLERS.items():
        images, seconds = timed_samples(model, schedule, x_T, y, how["sampler"], how["steps"], how["eta"])
        results[name] = {"seconds": seconds, "fid": metrics.fid(real, images, judge),
                         "agreement": metrics.agreement(judge, images, y.cpu())}
        row = results[name]
        print(f"{name:<18}{how['steps']:>6}{seconds:>10.1f}{row['fid']:>9.3f}{row['agreement']:>11.3f}")
    ddpm = results["DDPM (ancestral)"]
    for name in ("DDIM (eta 0)", "DDIM (eta 0.5)"):
        ddim = results[name]
        print(f"{name}: time DDPM-1000 / DDIM-25: {ddpm['seconds'] / ddim['seconds']:.1f}   "
              f"FID DDIM-25 / DDPM-1000: {ddim['fid'] / ddpm['fid']:.2f}   "
              f"agreement DDIM-25 - DDPM-1000: {ddim['agreement'] - ddpm['agreement']:+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["training", "sampling", "all"], default="all")
    parser.add_argument("--batch", type=int, default=64, help="training: batch size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="training: image sizes")
    parser.add_argument("--base", type=int, default=32, help="training: base channel width")
    parser.add_argument("--steps", type=int, default=5,
                        help="training: timed steps per model and size (after 1 warm-up)")
    parser.add_argument("--n", type=int, default=500, help="sampling: samples per sampler")
    parser.add_argument("--device", default=None, help="sampling: device (default: config.device())")
    args = parser.parse_args()
    if args.n < 2:
        parser.error(f"--n must be at least 2 (FID needs two samples), got {args.n}")
    if args.part in ("training", "all"):
        training(args)
    if args.part in ("sampling", "all"):
        sampling(args)


if __name__ == "__main__":
    main()
