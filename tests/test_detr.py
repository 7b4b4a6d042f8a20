"""Tests for minivit.detr: shapes, reference layers, official key map, padding masks, post-processing."""
import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from minivit.detr import (
    DETR,
    OFFICIAL_DETR_R50_URL,
    POSITION_PLACEMENTS,
    Backbone,
    DETRDecoder,
    DETRDecoderLayer,
    DETREncoder,
    DETREncoderLayer,
    FrozenBatchNorm2d,
    MinimalDETR,
    PositionEmbeddingLearned,
    PositionEmbeddingSine,
    build_detr_r50,
    build_tiny_detr,
    load_official_detr_r50,
    load_official_detr_state_dict,
    minivit_to_official_key,
    official_to_minivit_key,
    pad_images,
    postprocess,
    to_official_state_dict,
)

# ----------------------------------------------------------------------------- the official names


def official_detr_r50_shapes(num_classes=91, num_queries=100, dim=256, ffn=2048, enc_layers=6, dec_layers=6):
    """Every entry of detr-r50-e632da11.pth["model"] (facebookresearch/detr, DETR-R50), name -> shape.

    Written from the official code: the Joiner's backbone (item 0, torchvision ResNet-50 with
    FrozenBatchNorm2d, no fc) under ``backbone.0.body``, the post-norm transformer with
    nn.MultiheadAttention (in_proj_weight/bias, out_proj), no encoder norm, a decoder norm,
    and the heads. 458 entries.
    """
    shapes = {}

    def batch_norm(prefix, channels):
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)

    body = "backbone.0.body"
    shapes[f"{body}.conv1.weight"] = (64, 3, 7, 7)
    batch_norm(f"{body}.bn1", 64)
    in_channels = 64
    for stage, (num_blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        for block in range(num_blocks):
            prefix = f"{body}.layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = (width, in_channels, 1, 1)
            batch_norm(f"{prefix}.bn1", width)
            shapes[f"{prefix}.conv2.weight"] = (width, width, 3, 3)
            batch_norm(f"{prefix}.bn2", width)
            shapes[f"{prefix}.conv3.weight"] = (4 * width, width, 1, 1)
            batch_norm(f"{prefix}.bn3", 4 * width)
            if block == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (4 * width, in_channels, 1, 1)
                batch_norm(f"{prefix}.downsample.1", 4 * width)
            in_channels = 4 * width

    def attention(prefix):
        shapes[f"{prefix}.in_proj_weight"] = (3 * dim, dim)
        shapes[f"{prefix}.in_proj_bias"] = (3 * dim,)
        shapes[f"{prefix}.out_proj.weight"] = (dim, dim)
        shapes[f"{prefix}.out_proj.bias"] = (dim,)

    def feed_forward_and_norms(prefix, num_norms):
        shapes.update({
            f"{prefix}.linear1.weight": (ffn, dim), f"{prefix}.linear1.bias": (ffn,),
            f"{prefix}.linear2.weight": (dim, ffn), f"{prefix}.linear2.bias": (dim,),
        })
        for n in range(1, num_norms + 1):
            shapes[f"{prefix}.norm{n}.weight"] = shapes[f"{prefix}.norm{n}.bias"] = (dim,)

    for layer in range(enc_layers):
        attention(f"transformer.encoder.layers.{layer}.self_attn")
        feed_forward_and_norms(f"transformer.encoder.layers.{layer}", 2)
    for layer in range(dec_layers):
        attention(f"transformer.decoder.layers.{layer}.self_attn")
        attention(f"transformer.decoder.layers.{layer}.multihead_attn")
        feed_forward_and_norms(f"transformer.decoder.layers.{layer}", 3)
    shapes["transformer.decoder.norm.weight"] = shapes["transformer.decoder.norm.bias"] = (dim,)
    shapes.update({
        "class_embed.weight": (num_classes + 1, dim), "class_embed.bias": (num_classes + 1,),
        "bbox_embed.layers.0.weight": (dim, dim), "bbox_embed.layers.0.bias": (dim,),
        "bbox_embed.layers.1.weight": (dim, dim), "bbox_embed.layers.1.bias": (dim,),
        "bbox_embed.layers.2.weight": (4, dim), "bbox_embed.layers.2.bias": (4,),
        "query_embed.weight": (num_queries, dim),
        "input_proj.weight": (dim, 2048, 1, 1), "input_proj.bias": (dim,),
    })
    return shapes


@pytest.fixture(scope="module")
def detr_r50():
    torch.manual_seed(0)
    return build_detr_r50().eval()


def test_official_list_has_458_entries():
    assert len(official_detr_r50_shapes()) == 458


def test_official_key_map_round_trip(detr_r50):
    official = to_official_state_dict(detr_r50)
    assert {k: tuple(v.shape) for k, v in official.items()} == official_detr_r50_shapes()

    torch.manual_seed(1)
    fresh = build_detr_r50().eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = fresh(images)["pred_logits"]
        load_official_detr_state_dict(fresh, {"model": official})  # the checkpoint's layout
        expected, loaded = detr_r50(images), fresh(images)
    assert not torch.allclose(before, expected["pred_logits"])
    torch.testing.assert_close(loaded["pred_logits"], expected["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(loaded["pred_boxes"], expected["pred_boxes"], rtol=0, atol=0)


def test_load_official_detr_r50_offline_returns_none(monkeypatch, capsys):
    def no_internet(*args, **kwargs):
        raise urllib.error.URLError("no internet")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_internet)
    assert load_official_detr_r50() is None
    printed = capsys.readouterr().out
    assert "could not be downloaded" in printed and printed.count("\n") == 1


def test_load_official_detr_r50_loads_the_downloaded_checkpoint(monkeypatch, detr_r50):
    checkpoint = {"model": to_official_state_dict(detr_r50)}
    requested = []

    def fake_download(url, **kwargs):
        requested.append(url)
        return checkpoint

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    torch.manual_seed(1)  # the freshly built model starts from other weights than detr_r50
    model = load_official_detr_r50()
    assert isinstance(model, DETR) and not model.training
    assert requested == [OFFICIAL_DETR_R50_URL]
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected, loaded = detr_r50(images), model(images)
    torch.testing.assert_close(loaded["pred_logits"], expected["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(loaded["pred_boxes"], expected["pred_boxes"], rtol=0, atol=0)


def test_key_map_examples():
    assert official_to_minivit_key("backbone.0.body.layer1.0.bn1.running_mean") == (
        "backbone.body.layer1.0.bn1.running_mean"
    )
    assert official_to_minivit_key("transformer.decoder.layers.3.multihead_attn.in_proj_weight") == (
        "transformer.decoder.layers.3.cross_attn.qkv.weight"
    )
    assert official_to_minivit_key("transformer.encoder.layers.0.self_attn.out_proj.bias") == (
        "transformer.encoder.layers.0.self_attn.proj.bias"
    )
    assert official_to_minivit_key("input_proj.weight") == "input_proj.weight"


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("transformer.decoder.norm.weight"), "missing: transformer.decoder.norm.weight"),
    (lambda sd: sd.__setitem__("transformer.encoder.norm.weight", torch.ones(256)),
     "unexpected: transformer.encoder.norm.weight"),
    (lambda sd: sd.__setitem__("class_embed.weight", torch.zeros(251, 256)),
     r"shape mismatch: class_embed.weight: checkpoint \(251, 256\)"),
])
def test_loader_rejects_bad_state_dicts(detr_r50, damage, message):
    official = to_official_state_dict(detr_r50)
    damage(official)
    with pytest.raises(ValueError, match=message):
        load_official_detr_state_dict(detr_r50, official)


def test_parameter_count_is_detr_r50(detr_r50):
    assert round(sum(p.numel() for p in detr_r50.parameters()) / 1e6, 1) == 41.5  # paper: "41M"


# ----------------------------------------------------------------------------- pieces against references


def test_frozen_batchnorm_matches_torchvision_and_loads_batchnorm_weights():
    torch.manual_seed(0)
    batch_norm = nn.BatchNorm2d(8)
    batch_norm.running_mean.uniform_(-1, 1)
    batch_norm.running_var.uniform_(0.5, 2)
    nn.init.normal_(batch_norm.weight)
    ours, reference = FrozenBatchNorm2d(8), torchvision.ops.FrozenBatchNorm2d(8)
    ours.load_state_dict(batch_norm.state_dict())  # carries num_batches_tracked: dropped
    reference.load_state_dict(batch_norm.state_dict())
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(ours(x), reference(x))
    torch.testing.assert_close(ours(x), batch_norm.eval()(x))
    assert len(list(ours.parameters())) == 0


def test_backbone_shapes_mask_and_frozen_parts():
    backbone = Backbone().eval()
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[:, :, 64:] = True
    with torch.no_grad():
        features, feature_mask = backbone(torch.randn(1, 3, 64, 96), mask)
    assert features.shape == (1, 2048, 2, 3) and feature_mask.shape == (1, 2, 3)
    assert feature_mask[0, :, 2].all() and not feature_mask[0, :, :2].any()
    trainable = {name.split(".")[0] for name, p in backbone.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


def test_encoder_layer_equals_torch_post_norm_layer_without_positions():
    # the official layers are nn.Transformer*Layer with positions added: same names through the key map
    torch.manual_seed(0)
    ours = DETREncoderLayer(32, 4, 64, dropout=0.0).eval()
    reference = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    reference.load_state_dict({minivit_to_official_key(k): v for k, v in ours.state_dict().items()})
    src, padding = torch.randn(2, 7, 32), torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    out, _ = ours(src, torch.zeros_like(src), padding)
    expected = reference(src, src_key_padding_mask=padding)
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1, :5], expected[1, :5])


def test_decoder_layer_equals_torch_post_norm_layer_without_positions():
    torch.manual_seed(0)
    ours = DETRDecoderLayer(32, 4, 64, dropout=0.0).eval()
    reference = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    reference.load_state_dict({minivit_to_official_key(k): v for k, v in ours.state_dict().items()})
    tgt, memory = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
    out, _, _ = ours(tgt, memory, torch.zeros_like(memory), torch.zeros_like(tgt))
    torch.testing.assert_close(out, reference(tgt, memory))


def test_encoder_and_decoder_stacks_equal_torch_stacks_without_positions():
    # the official module boundaries: transformer.encoder(src, pos, mask) and transformer.decoder(...)
    torch.manual_seed(0)
    encoder, decoder = DETREncoder(2, 32, 4, 64, dropout=0.0).eval(), DETRDecoder(2, 32, 4, 64, dropout=0.0).eval()
    reference_encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
                                              2, enable_nested_tensor=False).eval()
    reference_decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
                                              2, norm=nn.LayerNorm(32)).eval()
    for ours, reference in ((encoder, reference_encoder), (decoder, reference_decoder)):
        reference.load_state_dict({minivit_to_official_key(k): v for k, v in ours.state_dict().items()})
    src, tgt = torch.randn(2, 9, 32), torch.randn(2, 5, 32)
    memory, weights = encoder(src, torch.zeros_like(src), need_weights=True)
    torch.testing.assert_close(memory, reference_encoder(src))
    assert weights.shape == (2, 2, 4, 9, 9)  # (layers, B, heads, N, N)
    hs, self_weights, cross_weights = decoder(tgt, memory, torch.zeros_like(memory), torch.zeros_like(tgt))
    torch.testing.assert_close(hs[-1], reference_decoder(tgt, memory))  # the final norm ends both
    assert hs.shape == (2, 2, 5, 32) and self_weights is None and cross_weights is None


def test_decoder_layer_adds_positions_to_queries_and_keys_only():
    """The official decoder layer (post-norm) written with PyTorch's own attention modules."""
    torch.manual_seed(0)
    ours = DETRDecoderLayer(32, 4, 64, dropout=0.0).eval()
    ref = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    ref.load_state_dict({minivit_to_official_key(k): v for k, v in ours.state_dict().items()})
    tgt, query_pos = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    memory, pos = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    padding = torch.zeros(2, 9, dtype=torch.bool)
    padding[0, 6:] = True
    out, _, cross = ours(tgt, memory, pos, query_pos, padding, need_weights=True)
    x = ref.norm1(tgt + ref.self_attn(tgt + query_pos, tgt + query_pos, tgt)[0])
    x = ref.norm2(x + ref.multihead_attn(x + query_pos, memory + pos, memory, key_padding_mask=padding)[0])
    x = ref.norm3(x + ref.linear2(torch.relu(ref.linear1(x))))
    torch.testing.assert_close(out, x)
    assert cross[0, :, :, 6:].abs().max() == 0  # no attention to padded keys


def test_pretrained_backbone_falls_back_with_a_warning(monkeypatch):
    real_resnet50 = torchvision.models.resnet50

    def offline_resnet50(weights=None, **kwargs):
        if weights is not None:
            raise OSError("no network")
        return real_resnet50(weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "resnet50", offline_resnet50)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        backbone = Backbone(pretrained=True)
    assert isinstance(backbone.body.bn1, FrozenBatchNorm2d)


def test_sine_position_encoding_values_and_padding():
    encoding = PositionEmbeddingSine(num_pos_feats=8)
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    pos = encoding(mask)
    assert pos.shape == (1, 16, 4, 6)
    # row 1, column 2: y = 2/4 * 2pi, x = 3/6 * 2pi; channel 2i uses sin, 2i+1 cos, frequency 10000^(2i/8)
    y, x = 2 / 4 * 2 * math.pi, 3 / 6 * 2 * math.pi
    expected_y = [f(y / 10000 ** (2 * (i // 2) / 8)) for i, f in zip(range(8), [math.sin, math.cos] * 4)]
    expected_x = [f(x / 10000 ** (2 * (i // 2) / 8)) for i, f in zip(range(8), [math.sin, math.cos] * 4)]
    torch.testing.assert_close(pos[0, :, 1, 2], torch.tensor(expected_y + expected_x), atol=1e-5, rtol=0)
    padded = torch.ones(1, 7, 9, dtype=torch.bool)
    padded[:, :4, :6] = False
    torch.testing.assert_close(encoding(padded)[..., :4, :6], pos)


def test_learned_position_encoding_layout_and_limit():
    encoding = PositionEmbeddingLearned(num_pos_feats=4, max_size=10)
    pos = encoding(torch.zeros(2, 3, 5, dtype=torch.bool))
    assert pos.shape == (2, 8, 3, 5)
    torch.testing.assert_close(pos[1, :4, 2, 4], encoding.col_embed.weight[4])
    torch.testing.assert_close(pos[1, 4:, 2, 4], encoding.row_embed.weight[2])
    with pytest.raises(ValueError, match="larger than max_size"):
        encoding(torch.zeros(1, 11, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- the models


def test_minimal_detr_shapes_follow_the_stride_32_formula():
    model = MinimalDETR().eval()
    height, width = 128, 200  # 800x1200 (the paper's) gives 25x38; run in the notebook
    with torch.no_grad():
        steps = model.forward_intermediates(torch.randn(1, 3, height, width))
    h, w = math.ceil(height / 32), math.ceil(width / 32)
    assert {name: list(t.shape) for name, t in steps.items()} == {
        "backbone features": [1, 2048, h, w],
        "projected features": [1, 256, h, w],
        "position embedding": [h * w, 1, 256],
        "decoder output": [100, 1, 256],
        "class logits": [100, 1, 92],
        "boxes": [100, 1, 4],
    }
    assert [math.ceil(800 / 32), math.ceil(1200 / 32)] == [25, 38]
    assert ((steps["boxes"] > 0) & (steps["boxes"] < 1)).all()


def test_detr_outputs_aux_and_attention():
    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=5, num_queries=10, num_encoder_layers=2, num_decoder_layers=3).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outputs = model(images)
        outputs_again, attention = model.forward_with_attention(images)
    assert outputs["pred_logits"].shape == (2, 10, 6) and outputs["pred_boxes"].shape == (2, 10, 4)
    assert len(outputs["aux_outputs"]) == 2
    assert outputs["aux_outputs"][0]["pred_boxes"].shape == (2, 10, 4)
    torch.testing.assert_close(outputs_again["pred_logits"], outputs["pred_logits"], atol=1e-5, rtol=1e-5)
    assert attention["feature_size"] == (8, 12)  # the tiny DETR's backbone has stride 8
    assert attention["encoder"].shape == (2, 2, 4, 96, 96)
    assert attention["decoder_self"].shape == (3, 2, 4, 10, 10)
    assert attention["decoder_cross"].shape == (3, 2, 4, 10, 96)
    torch.testing.assert_close(attention["decoder_cross"].sum(-1), torch.ones(3, 2, 4, 10))
    # every decoder layer's output goes through the shared final norm, then the heads
    normed = []
    handle = model.transformer.decoder.norm.register_forward_hook(lambda module, inputs, output: normed.append(output))
    with torch.no_grad():
        outputs = model(images)
        handle.remove()
        per_layer = [aux["pred_logits"] for aux in outputs["aux_outputs"]] + [outputs["pred_logits"]]
        assert len(normed) == 3
        for hidden, logits in zip(normed, per_layer):
            torch.testing.assert_close(model.class_embed(hidden), logits)


def test_padded_image_gets_the_same_predictions_as_alone():
    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=3).eval()
    small, large = torch.rand(3, 64, 80), torch.rand(3, 96, 128)  # sizes: multiples of the stride 8
    batch, mask = pad_images([small, large])
    assert batch.shape == (2, 3, 96, 128) and mask[0, 64:].all() and mask[0, :, 80:].all() and not mask[1].any()
    with torch.no_grad():
        together = model(batch, mask)
        alone = model(small[None])
    torch.testing.assert_close(together["pred_logits"][0], alone["pred_logits"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together["pred_boxes"][0], alone["pred_boxes"][0], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        ignored_mask = model(batch)  # without the mask, the padding changes the predictions
    assert not torch.allclose(ignored_mask["pred_logits"][0], alone["pred_logits"][0], atol=1e-3)


def test_tiny_detr_trains_one_step():
    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=3, num_queries=8)
    outputs = model(torch.rand(2, 3, 64, 64))
    loss = outputs["pred_logits"].logsumexp(-1).mean() + outputs["aux_outputs"][0]["pred_boxes"].mean()
    loss.backward()
    assert model.query_embed.weight.grad is not None and model.backbone.layers[0][0].weight.grad is not None


# ----------------------------------------------------------------------------- where the positions go (Table 3)


def official_forward(model: DETR, images: torch.Tensor) -> torch.Tensor:
    """The final logits computed layer by layer as the official code does: the spatial positions added to
    the queries and keys of every encoder self-attention and to the keys of every decoder cross-attention."""
    mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
    features, feature_mask = model.backbone(images, mask)
    src = model.input_proj(features).flatten(2).transpose(1, 2)  # (B, N, D)
    pos = model.position_embedding(feature_mask).flatten(2).transpose(1, 2)  # (B, N, D)
    padding = feature_mask.flatten(1)
    for layer in model.transformer.encoder.layers:
        src, _ = layer(src, pos, padding)
    query_pos = model.query_embed.weight[None].expand(images.shape[0], -1, -1)
    tgt = torch.zeros_like(query_pos)
    for layer in model.transformer.decoder.layers:
        tgt, _, _ = layer(tgt, src, pos, query_pos, padding)
    return model.class_embed(model.transformer.decoder.norm(tgt))


@pytest.mark.parametrize("placement", sorted(POSITION_PLACEMENTS))
def test_every_position_placement_builds_runs_and_trains(placement):
    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=3, num_queries=6, position_placement=placement)
    assert model.config.position_placement == placement == model.transformer.position_placement
    outputs = model(torch.rand(2, 3, 64, 48))
    assert outputs["pred_logits"].shape == (2, 6, 4) and outputs["pred_boxes"].shape == (2, 6, 4)
    assert len(outputs["aux_outputs"]) == 1 and torch.isfinite(outputs["pred_boxes"]).all()
    outputs["pred_boxes"].sum().backward()
    assert model.query_embed.weight.grad.abs().sum() > 0


def test_all_is_the_default_and_the_official_forward_bit_for_bit():
    images = torch.rand(2, 3, 64, 64)
    torch.manual_seed(3)
    default = build_tiny_detr(num_classes=3).eval()
    torch.manual_seed(3)
    explicit = build_tiny_detr(num_classes=3, position_placement="all").eval()
    assert default.config.position_placement == "all"
    with torch.no_grad():
        ours = default(images)["pred_logits"]
        assert torch.equal(ours, explicit(images)["pred_logits"])
        assert torch.equal(ours, official_forward(default, images))


def _outputs_with_random_positions(model, images, seed):
    """The outputs and the encoder's memory when the positional encoding is replaced by random numbers."""
    generator = torch.Generator().manual_seed(seed)
    original = model.position_embedding.forward
    model.position_embedding.forward = lambda mask: torch.randn(original(mask).shape, generator=generator)
    memory = []
    handle = model.transformer.encoder.register_forward_hook(lambda module, inputs, output: memory.append(output[0]))
    try:
        with torch.no_grad():
            return model(images), memory[0]
    finally:
        handle.remove()
        model.position_embedding.forward = original


@pytest.mark.parametrize("placement", sorted(POSITION_PLACEMENTS))
def test_which_parts_depend_on_the_positional_encoding(placement):
    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=3, position_placement=placement).eval()
    images = torch.rand(2, 3, 64, 64)
    (first, memory_first), (second, memory_second) = (_outputs_with_random_positions(model, images, seed)
                                                      for seed in (1, 2))
    encoder_sees_positions = placement in ("all", "input")
    assert torch.equal(memory_first, memory_second) != encoder_sees_positions
    outputs_equal = torch.equal(first["pred_logits"], second["pred_logits"])
    assert outputs_equal == (placement == "none")  # "none": no trace of the positions anywhere
    if placement == "none":
        assert torch.equal(first["pred_boxes"], second["pred_boxes"])


def test_bad_position_placement_is_named():
    with pytest.raises(ValueError, match="position_placement"):
        build_tiny_detr(position_placement="everywhere")


def test_checkpoint_written_before_position_placement_loads(tmp_path):
    from minivit.detection import load_tiny_detr, save_tiny_detr
    from minivit.train.checkpoint import load_checkpoint

    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=3).eval()
    path = tmp_path / "old.pt"
    save_tiny_detr(model, path, None, ("a", "b", "c"), image_size=64)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["config"]["position_placement"]  # as written before the field existed
    torch.save(checkpoint, path)
    loaded, info = load_tiny_detr(path)
    assert info["config"].position_placement == "all"
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images)["pred_logits"], model(images)["pred_logits"])
    load_checkpoint(path, build_tiny_detr(num_classes=3))  # into a model built today: the configs agree
    with pytest.raises(ValueError, match="config"):
        load_checkpoint(path, build_tiny_detr(num_classes=3, position_placement="none"))


# ----------------------------------------------------------------------------- post-processing and bad input


def test_postprocess_keeps_confident_queries_and_converts_boxes():
    logits = torch.full((1, 3, 4), -10.0)
    logits[0, 0, 2] = 10.0  # query 0: class 2, confident
    logits[0, 1, 3] = 10.0  # query 1: "no object"
    logits[0, 2, :3] = 0.0  # query 2: unsure among 3 classes
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1], [0.6, 0.6, 0.2, 0.2]]])
    (detections,) = postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]), threshold=0.7)
    assert detections["labels"].tolist() == [2]
    torch.testing.assert_close(detections["boxes"], torch.tensor([[80.0, 30.0, 120.0, 70.0]]))
    reference = torchvision.ops.box_convert(boxes[0, :1], "cxcywh", "xyxy") * torch.tensor([200, 100, 200, 100])
    torch.testing.assert_close(detections["boxes"], reference)
    assert detections["scores"].item() > 0.99


def test_bad_inputs_raise_clear_errors(detr_r50):
    tiny = build_tiny_detr(num_classes=2).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="floating point"):
        tiny(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        tiny(torch.rand(1, 3, 64, 64), torch.zeros(1, 64, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="all padding"):
        tiny(torch.rand(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="smaller than the backbone's stride"):
        tiny(torch.rand(1, 3, 4, 64))  # stride 8
    with pytest.raises(ValueError, match="at least one image"):
        pad_images([])
    with pytest.raises(ValueError, match="channels"):
        pad_images([torch.rand(3, 4, 4), torch.rand(1, 4, 4)])
    with pytest.raises(ValueError, match="num_classes"):
        build_tiny_detr(num_classes=0)
    with pytest.raises(ValueError, match="position_embedding"):
        DETR(tiny.backbone, 2, position_embedding="rope")
    with pytest.raises(ValueError, match="image sizes"):
        postprocess(tiny(torch.rand(2, 3, 32, 32)), [(32, 32)])
    with pytest.raises(ValueError, match="does not fit"):
        load_official_detr_state_dict(tiny, to_official_state_dict(detr_r50))
