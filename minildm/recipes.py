"""The recipes of the shipped checkpoints: how each named model is built and trained.

Importing this module registers every recipe with ``minildm.pretrained``; ``pretrained``
imports it on first use, so ``pretrained.load(name)`` and ``minildm train NAME`` see them all.
"""

from minildm import pretrained  # noqa: F401
