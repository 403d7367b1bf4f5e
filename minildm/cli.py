"""The ``minildm`` command: ``minildm train NAME``, ``minildm evaluate NAME``, ``minildm student SRC --out DST``."""

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


def _student(args: argparse.Namespace) -> int:
    from minildm import student

    written = student.make_student_versions(args.src, args.out)
    for path in written:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minildm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

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
