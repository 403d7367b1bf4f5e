"""The shipped shapes-clip: it matches new one-object images with their captions."""

from minildm import data, pretrained, text

def test_the_shipped_shapes_clip_retrieves_new_images_by_their_captions(repo_data):
    clip = pretrained.load("shapes-clip", device="cpu", train_if_missing=False, progress=False)
    batch = data.shapes(300, size=32, n_objects=1, seed=2)  # neither the training nor the manifest's images
    scores = text.retrieval_accuracy(clip, batch.images, batch.captions, k=1)
    assert min(scores.values()) >= 0.95, scores
