"""Text encoders: the word-level tokenizer, mini-CLIP's pooling and shapes, the contrastive
loss, retrieval accuracy with repeated captions, and the shapes-clip recipe's smoke run."""

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from minildm import checkpoint, data, text


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return text.MiniCLIP(**text.SHAPES_CLIP_CONFIG).eval()


# ---------------------------------------------------------------------------- tokenizer

def test_every_word_the_caption_grammar_makes_has_its_own_id():
    batch = data.shapes(400, n_objects=(1, 2), shape_set=data.ALL_SHAPES, seed=3)
    words = {w for caption in batch.captions for w in caption.split()}
    assert {"star", "and", "center", "white"} <= words
    assert words <= set(text.VOCABULARY)
    ids = list(text.VOCABULARY.values())
    assert sorted(ids) == list(range(len(ids)))  # one id per token, no gaps


def test_special_ids_pad_is_zero_and_eos_is_not_2():
    # eos_token_id == 2 sends transformers' CLIPTextModel to its legacy argmax-of-ids pooling
    assert text.PAD_ID == 0 and text.EOS_ID != 2
    assert len({text.PAD_ID, text.UNK_ID, text.BOS_ID, text.EOS_ID}) == 4


def test_captions_round_trip_through_encode_and_decode():
    captions = data.shapes(50, n_objects=(1, 2), shape_set=data.ALL_SHAPES, seed=4).captions
    input_ids, _ = text.encode(captions)
    assert text.decode(input_ids) == captions


def test_a_row_is_bos_words_eos_then_padding_with_the_mask_on_the_real_tokens():
    caption = "a small red circle in the top left on white"
    n_words = len(caption.split())
    input_ids, attention_mask = text.encode([caption, "a large blue square in the center on black"], max_length=16)
    assert input_ids.shape == attention_mask.shape == (2, 16) and input_ids.dtype == torch.long
    expected = [text.BOS_ID] + [text.VOCABULARY[w] for w in caption.split()] + [text.EOS_ID]
    expected += [text.PAD_ID] * (16 - len(expected))
    assert input_ids[0].tolist() == expected
    assert attention_mask[0].tolist() == [1] * (n_words + 2) + [0] * (16 - n_words - 2)


def test_the_default_length_fits_the_longest_two_object_caption():
    longest = "a small purple triangle in the bottom right and a large yellow square in the top left on white"
    input_ids, attention_mask = text.encode(longest)
    assert input_ids.shape == (1, text.CONTEXT_LENGTH) and attention_mask.all()
    assert input_ids[0, -1] == text.EOS_ID and text.decode(input_ids) == [longest]


def test_the_empty_prompt_is_bos_then_eos():
    # the unconditional input of classifier-free guidance
    input_ids, attention_mask = text.encode("")
    assert input_ids[0, :3].tolist() == [text.BOS_ID, text.EOS_ID, text.PAD_ID]
    assert attention_mask.sum() == 2


def test_truncation_keeps_the_first_words_and_ends_on_eos():
    caption = "a small red circle in the top left on white"
    input_ids, attention_mask = text.encode(caption, max_length=6)
    first_four = [text.VOCABULARY[w] for w in caption.split()[:4]]
    assert input_ids[0].tolist() == [text.BOS_ID, *first_four, text.EOS_ID]
    assert attention_mask.all()


def test_unknown_words_become_unk_and_case_does_not_matter():
    input_ids, _ = text.encode(["a small red dog", "A SMALL Red circle"])
    assert input_ids[0, 4] == text.UNK_ID
    assert input_ids[1, 1:5].tolist() == [text.VOCABULARY[w] for w in ("a", "small", "red", "circle")]
    assert text.decode(input_ids[:1]) == ["a small red [UNK]"]


def test_encode_refuses_what_is_not_text():
    with pytest.raises(TypeError, match="captions must be"):
        text.encode(3)
    with pytest.raises(TypeError, match=r"captions\[1\] must be a string"):
        text.encode(["a red circle", 5])
    with pytest.raises(TypeError, match="non-empty"):
        text.encode([])
    with pytest.raises(ValueError, match="max_length must be at least 2"):
        text.encode("a red circle", max_length=1)
    with pytest.raises(TypeError, match="max_length must be an int"):
        text.encode("a red circle", max_length=8.0)
    with pytest.raises(ValueError, match="integer tensor"):
        text.decode(torch.zeros(3))


# ---------------------------------------------------------------------------- mini-CLIP

def test_text_is_pooled_at_the_eos_position(model):
    captions = ["a large yellow square in the center on white",  # "white" has the largest id of all words
                "a small red circle in the top left and a small blue star in the bottom right on black"]
    input_ids, attention_mask = text.encode(captions)
    out = model.text_model(input_ids=input_ids, attention_mask=attention_mask)
    eos = torch.tensor([len(c.split()) + 1 for c in captions])  # [BOS] then the words: EOS sits at n_words + 1
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(2), eos])
    # the legacy branch (eos_token_id == 2) would pool at the largest id, a word, not at EOS
    assert not torch.equal(input_ids.argmax(dim=1), eos)
    expected = F.normalize(model.text_projection(out.last_hidden_state[torch.arange(2), eos]), dim=-1)
    assert torch.allclose(model.encode_text(input_ids, attention_mask), expected, atol=1e-6)


def test_padding_does_not_change_the_states_of_the_real_tokens(model):
    # causal attention: the caption's tokens (and so its EOS) never see the padding after them
    caption = "a small green triangle in the bottom left on black"
    padded_ids, padded_mask = text.encode(caption)
    n = int(padded_mask.sum())
    short = model.text_features(padded_ids[:, :n], padded_mask[:, :n])  # (1, n, width)
    long = model.text_features(padded_ids, padded_mask)  # (1, L, width)
    assert torch.allclose(long[:, :n], short, atol=1e-5)
    assert torch.allclose(model.encode_text(padded_ids, padded_mask),
                          model.encode_text(padded_ids[:, :n], padded_mask[:, :n]), atol=1e-5)


def test_mini_clip_shapes_and_unit_embeddings(model):
    batch = data.shapes(5, n_objects=(1, 2), seed=0)
    input_ids, attention_mask = text.encode(batch.captions)
    width, dim = text.SHAPES_CLIP_CONFIG["text_width"], text.SHAPES_CLIP_CONFIG["embed_dim"]
    features = model.text_features(input_ids, attention_mask)
    text_embeds = model.encode_text(input_ids, attention_mask)
    image_embeds = model.encode_image(batch.images)
    assert features.shape == (5, text.CONTEXT_LENGTH, width)
    assert text_embeds.shape == image_embeds.shape == (5, dim)
    assert torch.allclose(text_embeds.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(image_embeds.norm(dim=-1), torch.ones(5), atol=1e-5)
    logits = model(batch.images, input_ids, attention_mask)
    assert logits.shape == (5, 5)
    assert torch.allclose(logits, model.temperature_scale() * image_embeds @ text_embeds.T, atol=1e-5)


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100():
    torch.manual_seed(0)
    clip = text.MiniCLIP(text_layers=1, vision_layers=1)
    assert clip.temperature_scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        clip.logit_scale.fill_(10.0)  # exp(10) ~ 22026
    assert clip.temperature_scale().item() == pytest.approx(100.0, rel=1e-6)


def test_a_model_rebuilds_from_its_json_config_and_fp16_checkpoint(model, tmp_path):
    config = json.loads(json.dumps(text.SHAPES_CLIP_CONFIG))
    assert config == text.SHAPES_CLIP_CONFIG
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    checkpoint.save(tmp_path / "clip.safetensors", state, {"config": config})
    tensors, meta = checkpoint.load(tmp_path / "clip.safetensors")
    rebuilt = text.MiniCLIP(**meta["config"]).eval()
    rebuilt.load_state_dict(tensors)
    input_ids, attention_mask = text.encode("a large purple circle in the top right on black")
    assert torch.allclose(rebuilt.encode_text(input_ids, attention_mask),
                          model.encode_text(input_ids, attention_mask), atol=2e-2)


def test_mini_clip_refuses_bad_sizes_and_inputs(model):
    with pytest.raises(ValueError, match="text_width"):
        text.MiniCLIP(text_width=66, text_heads=4)
    with pytest.raises(ValueError, match="image_size"):
        text.MiniCLIP(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        text.MiniCLIP(embed_dim=0)
    with pytest.raises(ValueError, match=r"images must be a float tensor \(B, 3, 32, 32\)"):
        model.encode_image(torch.zeros(2, 3, 16, 16))
    input_ids, attention_mask = text.encode(["a small red circle in the center on black"])
    with pytest.raises(ValueError, match="EOS"):
        model.encode_text(input_ids[:, :5], attention_mask[:, :5])  # cut before the EOS
    with pytest.raises(ValueError, match="attention_mask must be a tensor shaped like input_ids"):
        model.encode_text(input_ids, attention_mask[:, :5])
    with pytest.raises(ValueError, match="max_length"):
        model.encode_text(*text.encode("a small red circle", max_length=text.CONTEXT_LENGTH + 1))
    with pytest.raises(ValueError, match="integer tensor"):
        model.text_features(input_ids.float(), attention_mask)


# ---------------------------------------------------------------------------- contrastive loss

def _cross_entropy(row, target):
    """-log softmax(row)[target], by hand."""
    return -(row[target] - math.log(sum(math.exp(v) for v in row)))


def test_contrastive_loss_is_the_mean_of_the_two_cross_entropies_by_hand():
    logits = [[2.0, 0.5], [-1.0, 1.0]]
    rows = sum(_cross_entropy(logits[i], i) for i in range(2)) / 2  # image -> caption
    columns = sum(_cross_entropy([logits[0][j], logits[1][j]], j) for j in range(2)) / 2  # caption -> image
    loss = text.contrastive_loss(torch.tensor(logits))
    assert loss.item() == pytest.approx((rows + columns) / 2, rel=1e-6)


def test_repeated_captions_spread_the_target_over_their_matches():
    # images 0 and 1 share a caption: image 0's target is half on caption 0, half on caption 1
    logits = torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.5, -1.0], [0.5, 0.0, 1.5]])
    positives = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    target = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]  # symmetric, so the same for columns

    def soft_ce(row, t):
        log_z = math.log(sum(math.exp(v) for v in row))
        return -sum(p * (v - log_z) for v, p in zip(row, t))

    rows = sum(soft_ce(logits[i].tolist(), target[i]) for i in range(3)) / 3
    columns = sum(soft_ce(logits[:, j].tolist(), target[j]) for j in range(3)) / 3
    assert text.contrastive_loss(logits, positives).item() == pytest.approx((rows + columns) / 2, rel=1e-6)
    # with only the diagonal as positives it is the paper's loss
    assert torch.allclose(text.contrastive_loss(logits, torch.eye(3, dtype=torch.bool)), text.contrastive_loss(logits))


def test_the_loss_is_smallest_when_each_image_is_paired_with_its_own_caption():
    g = torch.Generator().manual_seed(0)
    embeds = F.normalize(torch.randn(4, 8, generator=g), dim=-1)  # (4, 8): image i == caption i
    aligned = text.contrastive_loss(10 * embeds @ embeds.T)
    for order in itertools.permutations(range(4)):
        if list(order) != [0, 1, 2, 3]:
            assert aligned < text.contrastive_loss(10 * embeds @ embeds[list(order)].T)
    # and it tends to zero as the temperature falls
    assert text.contrastive_loss(1000 * embeds @ embeds.T) < 1e-6


def test_contrastive_loss_refuses_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        text.contrastive_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="diagonal"):
        text.contrastive_loss(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor"):
        text.contrastive_loss(torch.zeros(2, 2), torch.eye(2))


def test_same_caption_marks_identical_rows():
    input_ids, _ = text.encode(["a red circle", "a blue circle", "a red circle"])
    assert text.same_caption(input_ids).tolist() == [[True, False, True], [False, True, False], [True, False, True]]


# ---------------------------------------------------------------------------- retrieval

def test_retrieval_scores_perfect_and_worst_similarity():
    caption_of_image = torch.tensor([0, 0, 1, 2, 2, 3])  # 6 images, 4 distinct captions
    perfect = F.one_hot(caption_of_image, 4).float()  # (6, 4)
    assert text.retrieval_scores(perfect, caption_of_image) == {"text_to_image": 1.0, "image_to_text": 1.0}
    assert text.retrieval_scores(-perfect, caption_of_image) == {"text_to_image": 0.0, "image_to_text": 0.0}
    # top-3 of 4 captions still misses the worst one; every candidate (k >= 4) finds it
    assert text.retrieval_scores(-perfect, caption_of_image, k=3)["image_to_text"] == 0.0
    assert text.retrieval_scores(-perfect, caption_of_image, k=10) == {"text_to_image": 1.0, "image_to_text": 1.0}


def test_retrieval_scores_count_any_image_of_the_caption_as_right():
    caption_of_image = torch.tensor([0, 0, 1])
    similarity = torch.tensor([[0.1, 0.9],  # image 0 ranks caption 1 first: wrong
                               [0.8, 0.2],  # image 1 ranks caption 0 first: right
                               [0.0, 0.5]])  # image 2 ranks caption 1 first: right
    # caption 0's best image is image 1 (one of its two): right; caption 1's is image 0: wrong
    scores = text.retrieval_scores(similarity, caption_of_image)
    assert scores == pytest.approx({"text_to_image": 0.5, "image_to_text": 2 / 3})


def test_identical_captions_are_all_right_answers(model):
    # one caption drawn five times: whatever the (untrained) model ranks first is right
    images = data.shapes(5, seed=0).images
    captions = ["a small red circle in the center on white"] * 5
    assert text.retrieval_accuracy(model, images, captions) == {"text_to_image": 1.0, "image_to_text": 1.0}


def test_retrieval_refuses_bad_inputs(model):
    with pytest.raises(ValueError, match="one image per caption"):
        text.retrieval_accuracy(model, torch.zeros(3, 3, 32, 32), ["a red circle"] * 2)
    with pytest.raises(ValueError, match="k must be a positive int"):
        text.retrieval_scores(torch.zeros(2, 2), torch.tensor([0, 1]), k=0)
    with pytest.raises(ValueError, match="caption_of_image"):
        text.retrieval_scores(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------------------- the recipe

def test_the_smoke_training_run_completes_with_every_metric():
    model, metrics, steps = text.train_shapes_clip("smoke", False)
    assert isinstance(model, text.MiniCLIP) and not model.training
    assert steps == text.SHAPES_CLIP_SIZES["smoke"]["steps"]
    expected = {f"{name}_{direction}_top{k}" for name, k in (("one_object", 1), ("two_objects", 1), ("two_objects", 5))
                for direction in ("text_to_image", "image_to_text")}
    expected |= {f"zero_shot_{a}" for a in (*data.LABEL_COLUMNS, "background")} | {"loss_last_100"}
    assert set(metrics) == expected
    assert all(0 <= v <= 1 for k, v in metrics.items() if k != "loss_last_100")
    assert math.isfinite(metrics["loss_last_100"])
