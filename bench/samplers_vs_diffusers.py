"""Sampler step cost: minildm's pure-function steps vs diffusers' schedulers, side by side.

A sampler step is a handful of elementwise operations; it should cost nothing next to the
network. This measures a 50-step DDIM chain (eta = 0 and eta = 1) and a 50-step strided DDPM
chain on a (64, 3, 32, 32) batch with a fixed random "model output", so only the step maths
is timed, and prints minildm time / diffusers time (below 1 means we are faster).

    python bench/samplers_vs_diffusers.py [--batch 64] [--size 32] [--steps 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from minildm import samplers, schedules


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` runs, in seconds (the least disturbed by other work)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    T = 1000
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.size, args.size)
    x_T = torch.randn(shape, generator=gen)
    model_output = torch.randn(shape, generator=gen)
    noises = torch.randn((args.steps, *shape), generator=gen)
    s = schedules.NoiseSchedule(schedules.make_betas("linear", T))
    ts = samplers.timesteps(T, args.steps, spacing="leading")
    prev = list(ts[1:].tolist()) + [-1]

    def ours_ddim(eta):
        def run():
            x = x_T
            for i, (t, p) in enumerate(zip(ts.tolist(), prev)):
                x, _ = samplers.ddim_step(s, model_output, t, p, x, eta=eta, noise=noises[i])
        return run

    def theirs_ddim(eta):
        sched = DDIMScheduler(num_train_timesteps=T)
        sched.set_timesteps(args.steps)

        def run():
            x = x_T
            for i, t in enumerate(sched.timesteps):
                x = sched.step(model_output, t, x, eta=eta, variance_noise=noises[i]).prev_sample
        return run

    def ours_ddpm():
        x = x_T
        for i, (t, p) in enumerate(zip(ts.tolist(), prev)):
            x, _ = samplers.ddpm_step(s, model_output, t, x, prev_t=p, noise=noises[i])

    def theirs_ddpm():
        sched = DDPMScheduler(num_train_timesteps=T)
        sched.set_timesteps(args.steps)
        x = x_T
        for i, t in enumerate(sched.timesteps):
            x = sched.step(model_output, t, x, generator=torch.Generator().manual_seed(i)).prev_sample

    rows = [("DDIM eta=0", ours_ddim(0.0), theirs_ddim(0.0)),
            ("DDIM eta=1", ours_ddim(1.0), theirs_ddim(1.0)),
            ("DDPM strided", ours_ddpm, theirs_ddpm)]
    print(f"{args.steps}-step chains on a {shape} batch, best of {args.repeats}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'chain':<14} {'minildm ms':>11} {'diffusers ms':>13} {'ratio':>7}")
    for name, ours, theirs in rows:
        ours(), theirs()  # warm up both before timing either
        a, b = best_of(ours, args.repeats), best_of(theirs, args.repeats)
        print(f"{name:<14} {a * 1e3:>11.1f} {b * 1e3:>13.1f} {a / b:>7.2f}")


if __name__ == "__main__":
    main()
