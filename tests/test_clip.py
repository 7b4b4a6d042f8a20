"""Chapter 9: the mini CLIP: captions, tokenizer, text encoder, symmetric InfoNCE loss, zero-shot, probe."""
import math

import pytest
import torch
import torch.nn.functional as F

from minivit.clip import (
    MAX_LOGIT_SCALE,
    MiniCLIP,
    TextTransformer,
    WordTokenizer,
    caption,
    caption_vocabulary,
    class_embeddings,
    clip_loss,
    embed_images,
    embed_texts,
    fit_linear_probe,
    image_features,
    train_clip,
    zero_shot_logits,
)
from minivit.data.shapes import COLOR_NAMES, make_shapes


def target(labels, colors, boxes):
    return {"labels": torch.tensor(labels), "colors": torch.tensor(colors), "boxes": torch.tensor(boxes)}


def test_caption_from_labels_colours_and_positions():
    red, blue = COLOR_NAMES.index("red"), COLOR_NAMES.index("blue")
    two = target([1, 0], [red, blue], [[0.2, 0.5, 0.2, 0.2], [0.7, 0.45, 0.35, 0.35]])
    assert caption(two) == "a photo of a small red circle left of a big blue square"
    below = target([2, 0], [blue, red], [[0.5, 0.8, 0.3, 0.3], [0.45, 0.2, 0.2, 0.2]])
    assert caption(below) == "a photo of a big blue triangle below a small red square"
    one = target([2], [red], [[0.5, 0.5, 0.16, 0.16]])
    assert caption(one) == "a photo of a small red triangle"
    with pytest.raises(ValueError, match="record_colors=True"):
        caption(make_shapes(1, image_size=32).targets[0])


def test_captions_of_generated_shapes_match_their_targets():
    data = make_shapes(30, image_size=32, seed=0, min_objects=1, max_objects=3, record_colors=True)
    vocabulary = set(caption_vocabulary())
    for item in data.targets:
        text = caption(item)
        assert set(text.split()) <= vocabulary
        assert text.count(" a ") == len(item["labels"])  # "a photo of a ...": one "a" per shape after the first
        for color in item["colors"].tolist():
            assert COLOR_NAMES[color] in text
    again = make_shapes(1, image_size=32, seed=0, max_objects=3, record_colors=True)
    assert caption(data.targets[0]) == caption(again.targets[0])


def test_tokenizer_round_trip_and_errors():
    tokenizer = WordTokenizer()
    texts = [caption(t) for t in make_shapes(20, image_size=32, seed=1, max_objects=2, record_colors=True).targets]
    ids = tokenizer.encode(texts, length=16)
    assert ids.shape == (20, 16) and ids.dtype == torch.int64
    assert tokenizer.decode(ids) == texts
    assert tokenizer.decode(tokenizer.encode("a photo of a circle")) == "a photo of a circle"
    assert tokenizer.decode(tokenizer.encode("a purple circle")) == "a <unk> circle"
    with pytest.raises(ValueError, match="larger length"):
        tokenizer.encode("a " * 20, length=16)


def test_clip_loss_equals_a_direct_computation():
    torch.manual_seed(0)
    images, texts = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(math.log(10.0))
    sim = [[10.0 * float(images[i] @ texts[j]) for j in range(5)] for i in range(5)]
    image_to_text = [-(sim[i][i] - math.log(sum(math.exp(s) for s in sim[i]))) for i in range(5)]
    text_to_image = [-(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(5)))) for j in range(5)]
    expected = (sum(image_to_text) / 5 + sum(text_to_image) / 5) / 2
    assert clip_loss(images, texts, scale).item() == pytest.approx(expected, rel=1e-5)
    assert clip_loss(texts, images, scale).item() == pytest.approx(expected, rel=1e-5)  # symmetric


def test_aligned_embeddings_give_a_low_loss():
    emb = torch.eye(8)[:6]  # six orthogonal unit vectors
    scale = torch.tensor(MAX_LOGIT_SCALE)
    assert clip_loss(emb, emb, scale).item() < 1e-3
    shuffled = emb[torch.tensor([1, 2, 3, 4, 5, 0])]
    assert clip_loss(emb, shuffled, scale).item() > 50  # every pair wrong, with confidence
    assert clip_loss(emb, emb, torch.tensor(0.0)).item() == pytest.approx(
        -math.log(math.e / (math.e + 5)), rel=1e-5)  # temperature 1: the loss stays high
    with pytest.raises(ValueError, match="both be"):
        clip_loss(emb, emb[:3], scale)


def test_text_encoder_ignores_padding():
    torch.manual_seed(0)
    tokenizer = WordTokenizer()
    encoder = TextTransformer(len(tokenizer), 16, dim=32, depth=2, num_heads=4, max_length=16).eval()
    texts = ["a photo of a small red circle", "a photo of a big blue square left of a small green triangle"]
    short, long = tokenizer.encode(texts, length=14), tokenizer.encode(texts, length=16)
    torch.testing.assert_close(encoder(short), encoder(long))
    assert encoder(long).shape == (2, 16)
    with pytest.raises(ValueError, match="EOS"):
        encoder(torch.full((1, 4), 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="ids must be int64"):
        encoder(torch.zeros(1, 20, dtype=torch.int64))


def test_mini_clip_trains_and_clamps_the_temperature():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = WordTokenizer()
    data = make_shapes(64, image_size=16, seed=0, max_objects=2, record_colors=True)
    ids = tokenizer.encode([caption(t) for t in data.targets])
    model = MiniCLIP(len(tokenizer), embed_dim=16, image_size=16, patch_size=4, dim=32, depth=1, text_dim=32,
                     text_depth=1)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    history = train_clip(model, data.images, ids, steps=3, batch_size=32, device="cpu")
    assert len(history["loss"]) == len(history["temperature"]) == 3
    assert history["temperature"][0] == pytest.approx(0.01, rel=1e-2)  # clamped at a scale of 100
    assert model.logit_scale.item() <= MAX_LOGIT_SCALE + 1e-6
    classes = class_embeddings(model, tokenizer, [["a photo of a square"], ["a photo of a circle", "a circle"]])
    assert classes.shape == (2, 16)
    torch.testing.assert_close(classes.norm(dim=-1), torch.ones(2))
    assert zero_shot_logits(model, data.images[:5], classes).shape == (5, 2)
    assert image_features(model, data.images[:5]).shape == (5, 32)
    images_emb, texts_emb = embed_images(model, data.images[:5], batch_size=2), embed_texts(model, ids[:5])
    assert images_emb.shape == texts_emb.shape == (5, 16)
    torch.testing.assert_close(zero_shot_logits(model, data.images[:5], texts_emb), images_emb @ texts_emb.T)
    torch.testing.assert_close(images_emb.norm(dim=-1), torch.ones(5))
    with pytest.raises(ValueError, match="batch_size"):
        train_clip(model, data.images[:8], ids[:8], steps=1, batch_size=32)


def test_linear_probe_separates_separable_features():
    torch.manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn(60, 5) * 0.1 + F.one_hot(labels, 5).float() * 100 + 7  # large offset: standardized
    probe = fit_linear_probe(features, labels, 3)
    assert (probe(features).argmax(1) == labels).all()
    with pytest.raises(ValueError, match="labels"):
        fit_linear_probe(features, labels[:5], 3)


def test_mini_clip_on_an_accelerator_returns_cpu_results():
    from minivit.testing import fake_accelerator

    tokenizer = WordTokenizer()
    data = make_shapes(32, image_size=16, seed=0, max_objects=2, record_colors=True)
    ids = tokenizer.encode([caption(t) for t in data.targets])
    model = MiniCLIP(len(tokenizer), embed_dim=16, image_size=16, patch_size=4, dim=32, depth=1, text_dim=32,
                     text_depth=1)
    with fake_accelerator() as device:
        history = train_clip(model, data.images, ids, steps=2, batch_size=16)  # images and ids stay on the CPU
        assert next(model.parameters()).device == device and len(history["loss"]) == 2
        classes = class_embeddings(model, tokenizer, [["a photo of a square"], ["a photo of a circle"]])
        scores = zero_shot_logits(model, data.images[:4], classes)
        features = image_features(model, data.images[:4])
    assert classes.device.type == scores.device.type == features.device.type == "cpu"
    assert scores.shape == (4, 2) and features.shape == (4, 32)
