"""The shipped shapes-clip: it matches new one-object images with their captions."""

from pathlib import Path

from minildm import data, pretrained, text

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


def test_the_shipped_shapes_clip_retrieves_new_images_by_their_captions(tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.DATA_ENV, str(REPO_DATA))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    clip = pretrained.load("shapes-clip", device="cpu", train_if_missing=False, progress=False)
    batch = data.shapes(300, size=32, n_objects=1, seed=2)  # neither the training nor the manifest's images
    scores = text.retrieval_accuracy(clip, batch.images, batch.captions, k=1)
    assert min(scores.values()) >= 0.95, scores
