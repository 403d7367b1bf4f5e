"""The ``minildm`` command: ``minildm sample "PROMPT" --out IMG.png``, ``minildm train NAME``,
``minildm evaluate NAME``, ``minildm student SRC --out DST``."""

from __future__ import annotations

import argparse
import sys


def _train(args: argparse.Namespace) -> int:
    from minildm import pretrained

    pretrained.train(args.name, profile=args.profile)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from minildm import pretrained

    pretrained.evaluate(args.name, profile=args.profile)
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from minildm import ldm, recipes

    if args.n < 1 or args.steps < 1 or args.scale < 1:
        raise SystemExit("minildm sample: --n, --steps and --scale must be positive")
    try:
        unet, vae, clip, schedule = recipes.shapes_ldm_parts("cpu")
    except FileNotFoundError as missing:
        raise SystemExit(f"minildm sample: {missing}") from None
    images = ldm.sample(unet, vae, clip, schedule, [args.prompt] * args.n, steps=args.steps,
                        guidance_scale=args.guidance, seed=args.seed)  # (n, 3, 32, 32) in [-1, 1]
    row = torch.cat(list(images), dim=2)  # (3, 32, 32 n): the samples side by side
    pixels = ((row.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels)
    picture.resize((picture.width * args.scale, picture.height * args.scale), Image.NEAREST).save(args.out)
    print(f"{args.out}: {args.n} sample(s) of {args.prompt!r} ({args.steps} DDIM steps, guidance {args.guidance:g}, "
          f"seed {args.seed})")
    return 0


def _student(args: argparse.Namespace) -> int:
    from minildm import student

    written = student.make_student_versions(args.src, args.out)
    for path in written:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minildm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", help="text-to-image with the shipped shapes-ldm (offline, CPU, seconds)")
    p.add_argument("prompt", help='a caption in the shapes grammar, e.g. "a small red circle in the top left on white"')
    p.add_argument("--out", required=True, help="PNG file to write: the samples side by side")
    p.add_argument("--n", type=int, default=1, help="number of samples (default 1)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling of the 32x32 samples in the PNG (default 4)")
    p.set_defaults(run=_sample)

    p = sub.add_parser("train", help="reproduce a shipped checkpoint by its recipe and update the manifest")
    p.add_argument("name", help="checkpoint name, e.g. toy2d-ddpm")
    p.add_argument("--profile", default=None, help="ignored by recipes that fix their own sizes")
    p.set_defaults(run=_train)

    p = sub.add_parser("evaluate", help="re-score a shipped checkpoint by its recipe and update the manifest")
    p.add_argument("name", help="checkpoint name, e.g. digits-ddpm")
    p.add_argument("--profile", default=None, help="'smoke' scores only a few samples")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("student", help="write student versions of notebooks (solutions removed)")
    p.add_argument("src", help="a notebook or a folder of notebooks")
    p.add_argument("--out", required=True, help="folder for the student notebooks")
    p.set_defaults(run=_student)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
