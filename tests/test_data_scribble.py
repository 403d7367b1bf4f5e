"""data.scribble: a seeded, wobbly, broken copy of the shapes' outline (lesson 14's robustness probe)."""

import pytest
import torch
import torch.nn.functional as F

from minildm import data


@pytest.fixture(scope="module")
def batch():
    return data.shapes(16, size=32, n_objects=(1, 2), seed=3)


def near(a: torch.Tensor, b: torch.Tensor, pixels: int) -> torch.Tensor:
    """Pixels of a that lie within ``pixels`` (Chebyshev distance) of some pixel of b."""
    grown = F.max_pool2d(b.float(), 2 * pixels + 1, stride=1, padding=pixels) > 0
    return a & grown


def test_a_scribble_is_an_edge_map_in_minus_one_one_and_the_same_seed_gives_the_same_sketch(batch):
    s = data.scribble(batch.masks, seed=5)
    assert s.shape == batch.edges.shape and set(s.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(s, data.scribble(batch.masks, seed=5))
    assert not torch.equal(s, data.scribble(batch.masks, seed=6))


def test_without_wobble_and_gaps_the_scribble_is_the_edge_map(batch):
    assert torch.equal(data.scribble(batch.masks, seed=0, wobble=0.0, gap=0.0), batch.edges)


def test_the_stroke_stays_near_the_outline_but_is_moved_and_broken(batch):
    s, e = data.scribble(batch.masks, seed=1) > 0, batch.edges > 0
    # wobble 1 px (std): nearly every stroke pixel is within 3 px of the true outline ...
    assert near(s, e, 3).sum() >= 0.97 * s.sum()
    # ... yet many are not on it (moved), and the stroke is shorter than the outline (cut)
    assert (s & ~e).sum() >= 0.2 * s.sum()
    assert 0.5 * e.sum() <= s.sum() <= 0.9 * e.sum()
    # the gaps: a fraction of the outline has no stroke within a pixel
    assert (e & ~near(e, s, 1)).sum() >= 0.05 * e.sum()


def test_bigger_gaps_cut_more_of_the_stroke(batch):
    assert (data.scribble(batch.masks, seed=2, gap=0.6) > 0).sum() < (data.scribble(batch.masks, seed=2, gap=0.1) > 0).sum()


def test_bad_arguments_are_refused(batch):
    with pytest.raises(ValueError, match="masks must be"):
        data.scribble(batch.images)
    with pytest.raises(ValueError, match="gap"):
        data.scribble(batch.masks, gap=1.0)
    with pytest.raises(ValueError, match="wobble"):
        data.scribble(batch.masks, wobble=-1.0)
    with pytest.raises(TypeError, match="seed"):
        data.scribble(batch.masks, seed=1.5)
