"""U-Net training throughput: minildm's UNet vs diffusers' UNet2DModel, side by side.

Both networks get the same widths (base, 2 base, 2 base), attention at the middle level and in
the middle block, the same head count, GroupNorm groups and time-embedding width; minildm uses
two residual blocks per level on each side (one skip per level), diffusers one per down level
and two per up level (one skip per block), which is the closest parameter count it offers. Each
step is forward + backward + AdamW on a random batch, with a random-timestep MSE loss against
random noise; the script prints both parameter counts, images/s for each model and size, and
minildm / diffusers (above 1 means we are faster). Steps alternate between the two models so
both see the same machine load.

    python bench/unet_throughput.py [--batch 64] [--sizes 16 32] [--base 32] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from minildm.unet import UNet


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--base", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model and size (after 1 warm-up)")
    args = parser.parse_args()

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
    print(f"{'size':>6}{'minildm img/s':>16}{'diffusers img/s':>18}{'ratio':>8}")
    for size in args.sizes:
        x = torch.randn(args.batch, 3, size, size)
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (args.batch,))
        times = {name: [] for name in models}
        for step in range(args.steps + 1):
            for name, (model, call) in models.items():
                seconds = train_step(model, call, opts[name], x, t, noise)
                if step > 0:  # the first step of each is a warm-up
                    times[name].append(seconds)
        rate = {name: args.batch / statistics.median(ts) for name, ts in times.items()}
        print(f"{size:>6}{rate['minildm']:>16.1f}{rate['diffusers']:>18.1f}{rate['minildm'] / rate['diffusers']:>8.2f}")


if __name__ == "__main__":
    main()
