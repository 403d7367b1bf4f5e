"""What the explorer tests read off a widget: the PNG its Output shows, that PNG's pixels, how an
image is handed to imshow, and a counter of ``ldm.sample`` calls (the only way an LDM explorer samples)."""

import base64
import io

import matplotlib.image
import numpy as np
import torch

from minildm import ldm


def shown_png(explorer) -> bytes:
    """The PNG the Output widget holds, i.e. what the browser's <img> shows."""
    (output,) = explorer.output.outputs
    assert output["output_type"] == "display_data"
    return base64.b64decode(output["data"]["image/png"])


def pixels(png: bytes) -> np.ndarray:
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def as_drawn(image: torch.Tensor) -> np.ndarray:
    """How an image in [-1, 1] (3, H, W) is handed to imshow: (H, W, 3) in [0, 1]."""
    return ((image.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def count_samples(monkeypatch, record) -> list:
    """Wrap ``ldm.sample`` so that every call appends ``record(args, kwargs)`` to the returned list."""
    calls = []
    original = ldm.sample

    def counting(*args, **kwargs):
        calls.append(record(args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(ldm, "sample", counting)
    return calls
