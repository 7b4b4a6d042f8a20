"""minivit.viz: attention capture, rollout, attention distance, Fig. 7 analyses, explorers."""
import datetime
import io
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from minivit import viz
from minivit.vit import ViT

NOW = datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def small_vit():
    torch.manual_seed(0)
    return ViT(image_size=32, patch_size=8, dim=32, depth=3, num_heads=2, mlp_dim=64).eval()


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=generator)


def test_capture_attention_shapes_and_rows(small_vit, images):
    inputs = images.float() / 255
    logits, attention = viz.capture_attention(small_vit, inputs)
    assert attention.shape == (3, 3, 2, 17, 17)  # (layers, B, heads, 1 + 4*4 tokens, tokens)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(3, 3, 2, 17))
    torch.testing.assert_close(logits, small_vit(inputs))  # the weight path is the model's own forward


def test_capture_attention_rejects_uint8(small_vit, images):
    with pytest.raises(ValueError, match="preprocess"):
        viz.capture_attention(small_vit, images)


def test_rollout_hand_made_two_layers():
    # layer 1: heads [[1,0],[1,0]] and [[1,0],[0,1]] -> mean [[1,0],[.5,.5]]; layer 2: [[.5,.5],[1,0]] (one head twice)
    layer1 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    layer2 = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]] * 2)
    attention = torch.stack([layer1, layer2])  # (L=2, H=2, T=2, T=2)
    # with the residual: A1 = .5 W1 + .5 I = [[1,0],[.25,.75]], A2 = [[.75,.25],[.5,.5]]; R = A2 @ A1
    expected = torch.tensor([[0.8125, 0.1875], [0.625, 0.375]])
    torch.testing.assert_close(viz.attention_rollout(attention), expected)
    per_layer = viz.attention_rollout_per_layer(attention)
    torch.testing.assert_close(per_layer[0], torch.tensor([[1.0, 0.0], [0.25, 0.75]]))
    # without the residual: W2 @ W1 = [[.75,.25],[1,0]]
    torch.testing.assert_close(viz.attention_rollout(attention, residual=False),
                               torch.tensor([[0.75, 0.25], [1.0, 0.0]]))
    # a batch dimension gives the same per image
    batched = torch.stack([attention, attention], dim=1)  # (L, B, H, T, T)
    torch.testing.assert_close(viz.attention_rollout(batched), torch.stack([expected, expected]))


def test_rollout_rows_sum_to_one(small_vit, images):
    _, attention = viz.capture_attention(small_vit, images.float() / 255)
    rollout = viz.attention_rollout(attention)
    assert rollout.shape == (3, 17, 17)
    torch.testing.assert_close(rollout.sum(dim=-1), torch.ones(3, 17))
    with pytest.raises(ValueError, match="head_fusion"):
        viz.attention_rollout(attention, head_fusion="min")


def test_mean_attention_distance_known_pattern():
    # 2x2 patches of 4 px plus a class token (T = 5)
    head_neighbour = torch.zeros(5, 5)
    head_neighbour[:, 0] = 0.5  # half the weight on the class token: left out and renormalized
    for query, neighbour in ((0, 1), (1, 0), (2, 3), (3, 2)):  # self and the horizontal neighbour
        head_neighbour[1 + query, 1 + query] = 0.25
        head_neighbour[1 + query, 1 + neighbour] = 0.25
    head_uniform = torch.full((5, 5), 0.2)
    attention = torch.stack([head_neighbour, head_uniform])  # (H, T, T)
    distance = viz.mean_attention_distance(attention, grid_size=2, patch_size=4)
    # neighbour head: 0.5 * 0 + 0.5 * 4 px = 2 px; uniform head: (0 + 4 + 4 + 4*sqrt(2)) / 4 = 2 + sqrt(2) px
    torch.testing.assert_close(distance, torch.tensor([2.0, 2.0 + math.sqrt(2.0)]))


def test_patch_distance_matrix():
    distances = viz.patch_distance_matrix((2, 3), patch_size=10)
    assert distances.shape == (6, 6)
    assert distances[0, 5].item() == pytest.approx(math.hypot(10, 20))


def test_query_maps_and_bad_grid():
    attention = torch.arange(25.0).reshape(5, 5)
    torch.testing.assert_close(viz.query_maps(attention, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    torch.testing.assert_close(viz.query_maps(attention, 2, query_index=3), torch.tensor([[16.0, 17.0], [18.0, 19.0]]))
    with pytest.raises(ValueError, match="patch grid"):
        viz.query_maps(attention, 3)


def test_position_embedding_similarity(small_vit):
    similarity = viz.position_embedding_similarity(small_vit.pos_embed, 4)
    assert similarity.shape == (4, 4, 4, 4)
    table = small_vit.pos_embed[0, 1:].detach()
    expected = F.cosine_similarity(table[:, None], table[None], dim=-1).reshape(4, 4, 4, 4)
    torch.testing.assert_close(similarity, expected)
    torch.testing.assert_close(similarity.reshape(16, 16).diagonal(), torch.ones(16))


def test_patch_embedding_components_match_covariance_eigenvectors(small_vit):
    weight = small_vit.patch_embed.proj.weight  # (32, 3, 8, 8)
    components, explained = viz.patch_embedding_components(weight, num_components=5)
    assert components.shape == (5, 3, 8, 8)
    filters = weight.detach().flatten(1).double().numpy()
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(filters, rowvar=False))
    order = np.argsort(eigenvalues)[::-1][:5]
    cosines = np.abs((components.flatten(1).double().numpy() * eigenvectors[:, order].T).sum(axis=1))
    np.testing.assert_allclose(cosines, np.ones(5), atol=1e-4)
    np.testing.assert_allclose(explained.numpy(), eigenvalues[order] / eigenvalues.sum(), rtol=1e-4)
    with pytest.raises(ValueError, match="num_components"):
        viz.patch_embedding_components(weight, num_components=0)


def test_cross_layer_similarity_known_pattern():
    identity = torch.eye(2)[None]  # (H=1, T, T)
    uniform = torch.full((1, 2, 2), 0.5)
    similarity = viz.cross_layer_similarity(torch.stack([identity, uniform, uniform]))
    # columns (1,0),(0,1) against (.5,.5): cosine 1/sqrt(2); identical layers: 1
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(similarity, torch.tensor([[1.0, s, s], [s, 1.0, 1.0], [s, 1.0, 1.0]]))


def test_detr_map_helpers():
    encoder = torch.rand(2, 1, 4, 6, 6).softmax(dim=-1)  # (L, B, H, h*w, h*w), feature map 2x3
    reference_map = viz.detr_encoder_attention_at(encoder, (2, 3), reference=(1, 2))
    torch.testing.assert_close(reference_map, encoder[-1, 0, :, 5].mean(dim=0).reshape(2, 3))
    cross = torch.rand(3, 1, 4, 5, 6)  # (L, B, H, Q, h*w)
    maps = viz.detr_cross_attention_maps(cross, (2, 3))
    assert maps.shape == (5, 2, 3)
    torch.testing.assert_close(maps[2], cross[-1, 0, :, 2].mean(dim=0).reshape(2, 3))
    with pytest.raises(ValueError, match="outside"):
        viz.detr_encoder_attention_at(encoder, (2, 3), reference=(2, 0))


def test_overlay_and_png():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    heat = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    picture = viz.overlay_heatmap(image, heat, size=16)
    assert picture.shape == (16, 16, 3) and picture.dtype == np.uint8
    assert picture[2, 13].sum() > picture[13, 2].sum()  # the hot corner is brighter
    decoded = np.asarray(Image.open(io.BytesIO(viz.png_bytes(picture))))
    np.testing.assert_array_equal(decoded, picture)


def test_vit_explorer_callbacks_update_the_picture(small_vit, images):
    explorer = viz.ViTAttentionExplorer(small_vit, images, labels=torch.tensor([0, 1, 2]), class_names=["a", "b", "c"])
    first = explorer.picture.value
    assert first[:4] == b"\x89PNG"
    explorer.layer.value = 0
    after_layer = explorer.picture.value
    assert after_layer != first
    explorer.col.value = 0  # choosing a patch makes it the query
    assert explorer.query.value == viz.QUERY_PATCH
    assert explorer.picture.value != after_layer
    assert "patch (row 2, column 0)" in explorer.summary()
    for head in (viz.HEAD_ROLLOUT, "head 1"):
        before = explorer.picture.value
        explorer.head.value = head
        assert explorer.picture.value != before
    before = explorer.picture.value
    explorer.image_picker.value = 2
    assert explorer.picture.value != before and "test image 2: c" in explorer.caption.value


def test_vit_explorer_redraw_latency_under_200ms(small_vit, images):
    threads = torch.get_num_threads()
    explorer = viz.ViTAttentionExplorer(small_vit, images)
    assert torch.get_num_threads() == threads  # the explorer's single-thread section restores the setting
    timings = []
    for layer, row in ((0, 0), (1, 1), (2, 2), (0, 3), (1, 0), (2, 1)):
        start = time.perf_counter()
        explorer.layer.value = layer
        explorer.row.value = row
        timings.append((time.perf_counter() - start) / 2)
    assert np.median(timings) < 0.2, f"median redraw {np.median(timings) * 1000:.0f} ms"


def test_vit_explorer_upload(small_vit, images):
    explorer = viz.ViTAttentionExplorer(small_vit, images)
    before = explorer.picture.value
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), (250, 10, 10), np.uint8)).save(buffer, format="PNG")
    explorer.upload.value = ({"name": "red.png", "type": "image/png", "size": 1,
                              "content": memoryview(buffer.getvalue()), "last_modified": NOW},)
    assert explorer.image_label == "upload: red.png"
    assert explorer.image.shape == (3, 32, 32) and explorer.image[0].float().mean() > 200
    assert explorer.picture.value != before
    explorer.upload.value = ({"name": "bad.png", "type": "image/png", "size": 1,
                              "content": memoryview(b"not an image"), "last_modified": NOW},)
    assert "upload failed" in explorer.caption.value


def test_vit_explorer_rejects_float_images(small_vit):
    with pytest.raises(ValueError, match="uint8"):
        viz.ViTAttentionExplorer(small_vit, torch.rand(2, 3, 32, 32))


def test_detr_explorer_callbacks():
    from minivit.detr import build_tiny_detr

    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=3, num_queries=5, hidden_dim=32, num_heads=2, dim_feedforward=64,
                            backbone_widths=(8, 16, 16, 16))
    images = torch.rand(2, 3, 64, 64)
    explorer = viz.DETRAttentionExplorer(model, images, ["square", "circle", "triangle"], threshold=0.05)
    assert explorer.cross_maps.shape == (2, 5, 4, 4)  # (decoder layers, queries, h, w) of a stride-16 backbone
    assert len(explorer.query.options) == 6  # "all above threshold" and the five queries
    first = explorer.picture.value
    explorer.query.value = explorer.query.options[1][1]  # the best-scoring query
    single = explorer.picture.value
    assert single != first and "score" in explorer.caption.value
    explorer.layer.value = 0
    assert explorer.picture.value != single
    explorer.threshold.value = 0.95  # nothing left: the plain account says so
    explorer.query.value = viz.ALL_ABOVE_THRESHOLD
    assert "no query scores above 0.95" in explorer.summary()
    before = explorer.picture.value
    explorer.image_picker.value = 1
    assert explorer.picture.value != before


def test_classifier_maps_class_token_and_mean_pooling():
    attention = torch.arange(25.0).reshape(5, 5)
    torch.testing.assert_close(viz.classifier_maps(attention, 2, num_prefix_tokens=1),
                               torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    patches_only = torch.tensor([[0.5, 0.5, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0], [0.25, 0.25, 0.25, 0.25]])
    # mean pooling: the average query's weights, i.e. the column means
    torch.testing.assert_close(viz.classifier_maps(patches_only, 2, num_prefix_tokens=0),
                               torch.tensor([[0.1875, 0.4375], [0.0625, 0.3125]]))


def test_vit_explorer_with_mean_pooling(images):
    torch.manual_seed(0)
    model = ViT(image_size=32, patch_size=8, dim=32, depth=2, num_heads=2, mlp_dim=64, pool="mean").eval()
    explorer = viz.ViTAttentionExplorer(model, images)
    assert explorer.query.options == (viz.QUERY_POOLED, viz.QUERY_PATCH)
    assert explorer.attention.shape == (2, 2, 16, 16)  # no class token
    torch.testing.assert_close(explorer.current_map(), explorer.head_mean[1].mean(dim=0).reshape(4, 4))
    before = explorer.picture.value
    explorer.row.value = 0
    assert explorer.picture.value != before and "patch (row 0, column 2)" in explorer.summary()


def test_figures_have_titles_and_labels(small_vit, images):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, attention = viz.capture_attention(small_vit, images.float() / 255)
    distances = viz.mean_attention_distance(attention, 4, 8).mean(dim=1)  # (L, H)
    components, explained = viz.patch_embedding_components(small_vit.patch_embed.proj.weight, 4)
    encoder = torch.rand(1, 1, 2, 4, 4).softmax(-1)
    figures = [
        viz.plot_map_grid(images[0], viz.query_maps(attention[:, 0], 4), ["a", "b", "c"], ["h0", "h1"], "maps"),
        viz.plot_mean_attention_distance({"trained": distances, "untrained": distances}, 32, uniform_distance=12.0),
        viz.plot_position_similarity(viz.position_embedding_similarity(small_vit.pos_embed, 4)),
        viz.plot_patch_components(components, explained, "components"),
        viz.plot_cross_layer_similarity(viz.cross_layer_similarity(attention), "collapse"),
        viz.plot_detr_encoder_attention(images[0], encoder, (2, 2), [(0, 0), (1, 1)]),
        viz.plot_detr_queries(images[0], torch.tensor([[2.0, 2.0, 20.0, 20.0]]), [1], [0.9], torch.rand(1, 2, 2),
                              ["a", "b"]),
    ]
    for figure in figures:
        assert figure._suptitle is not None and figure._suptitle.get_text()
        plt.close(figure)
    assert figures[1].axes[0].get_ylabel() == "mean attention distance (pixels)"


# -------------------------------------------------- uploads (ipywidgets 7 and 8), escaping, size limits

EVIL_NAME = "<img src=x onerror=alert(1)>.png"


def _encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _photo(width: int, height: int, noise: int, seed: int = 0) -> Image.Image:
    """A photo-like picture (smooth colours plus sensor-like noise), made in a fraction of a second."""
    x, y = np.linspace(0, 12, width, dtype=np.float32), np.linspace(0, 9, height, dtype=np.float32)
    red = np.broadcast_to(127 + 100 * np.sin(x)[None, :], (height, width))
    green = np.broadcast_to(127 + 100 * np.cos(y)[:, None], (height, width))
    blue = 127 + 60 * np.sin(x[None, :] + y[:, None])
    pixels = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    pixels += np.random.default_rng(seed).integers(0, noise, pixels.shape, dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def big_uploads():
    """About 2 MB each: a 12-megapixel phone-sized JPEG and a 1200x900 PNG."""
    jpeg = _encoded(_photo(4032, 3024, noise=40), "JPEG", quality=80)
    png = _encoded(_photo(1200, 900, noise=16, seed=1), "PNG", compress_level=1)
    assert 1.5e6 < len(jpeg) < 4e6 and 1.5e6 < len(png) < 4e6, (len(jpeg), len(png))
    return {"photo.jpg": jpeg, "screenshot.png": png}


def _value_v8(name: str, content: bytes) -> tuple:
    """FileUpload.value as ipywidgets 8 holds it."""
    return ({"name": name, "type": "image/png", "size": len(content), "content": memoryview(content),
             "last_modified": NOW},)


def _value_v7(name: str, content: bytes) -> dict:
    """FileUpload.value as ipywidgets 7.x holds it."""
    metadata = {"name": name, "type": "image/png", "size": len(content), "lastModified": 1700000000000}
    return {name: {"metadata": metadata, "content": content}}


def _frontend_upload_v8(upload, name: str, content: bytes) -> None:
    """What JupyterLab's ipywidgets 8 front end sends for one chosen file (through the deserializer)."""
    upload.set_state({"value": [{"name": name, "type": "image/png", "size": len(content),
                                 "content": memoryview(content), "last_modified": 1700000000000}]})


def test_uploaded_files_reads_both_widget_formats():
    assert viz.uploaded_files(()) == [] and viz.uploaded_files({}) == [] and viz.uploaded_files(None) == []
    assert viz.uploaded_files(_value_v8("a.png", b"abc")) == [("a.png", b"abc")]
    assert viz.uploaded_files(_value_v7("a.png", b"abc")) == [("a.png", b"abc")]
    two_v8 = _value_v8("a.png", b"abc") + _value_v8("b.jpg", b"de")
    assert viz.uploaded_files(two_v8) == [("a.png", b"abc"), ("b.jpg", b"de")]
    two_v7 = {**_value_v7("a.png", b"abc"), **_value_v7("b.jpg", b"de")}
    assert viz.uploaded_files(two_v7) == [("a.png", b"abc"), ("b.jpg", b"de")]
    assert all(type(content) is bytes for _, content in viz.uploaded_files(two_v8))  # memoryviews copied out


def test_html_text_escapes_user_strings():
    assert viz.html_text(EVIL_NAME) == "&lt;img src=x onerror=alert(1)&gt;.png"
    assert viz.html_text('a & "b"\nc') == "a &amp; &quot;b&quot;<br>c"


def test_vit_explorer_escapes_the_uploaded_file_name(small_vit, images):
    explorer = viz.ViTAttentionExplorer(small_vit, images)
    explorer.upload.value = _value_v8(EVIL_NAME, _encoded(Image.new("RGB", (40, 30), (250, 10, 10)), "PNG"))
    assert explorer.image_label == f"upload: {EVIL_NAME}"  # the plain text keeps the name
    assert ("<img" not in explorer.caption.value
            and "upload: &lt;img src=x onerror=alert(1)&gt;.png" in explorer.caption.value)
    assert "<br>" in explorer.caption.value  # the caption's own line break stays markup
    explorer.upload.value = _value_v8(EVIL_NAME, b"not an image")
    assert explorer.caption.value.startswith("<b>upload failed:</b> &lt;img") and "<img" not in explorer.caption.value


def test_detr_explorer_escapes_class_names():
    from minivit.detr import build_tiny_detr

    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=2, num_queries=3, hidden_dim=32, num_heads=2, dim_feedforward=64,
                            backbone_widths=(8, 16, 16, 16))
    explorer = viz.DETRAttentionExplorer(model, torch.rand(1, 3, 64, 64), ["<b>x</b>", "y&z"], threshold=0.05)
    explorer.query.value = explorer.query.options[1][1]
    assert "<b>x</b>" not in explorer.caption.value and (
        "&lt;b&gt;x&lt;/b&gt;" in explorer.caption.value or "y&amp;z" in explorer.caption.value)


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and header claiming width x height: PIL reads the size without pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(16)))
            + chunk(b"IEND", b""))


def test_image_from_bytes_refuses_oversized_uploads():
    assert viz.MAX_UPLOAD_BYTES == 20_000_000 and viz.MAX_UPLOAD_PIXELS == 50_000_000
    with pytest.raises(ValueError, match=r"the file is 20\.0 MB, over the limit of 20\.0 MB"):
        viz.image_from_bytes(bytes(viz.MAX_UPLOAD_BYTES + 1), 32)
    with pytest.raises(ValueError, match=r"8000x7000 pixels \(56 megapixels\), over the limit of 50 megapixels"):
        viz.image_from_bytes(_png_header(8000, 7000), 32)
    with pytest.raises(ValueError, match="too many pixels.*limit is 50 megapixels"):  # PIL's own bomb check (> 179 MP)
        viz.image_from_bytes(_png_header(20000, 10000), 32)
    with pytest.raises(ValueError, match="could not read"):  # a header without pixels: fails when decoded
        viz.image_from_bytes(_png_header(7000, 7000), 32)


def test_image_from_bytes_big_photos_fast_and_upright(big_uploads):
    def best_of_three(function):
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            result = function()
            timings.append(time.perf_counter() - start)
        return result, min(timings)

    jpeg = big_uploads["photo.jpg"]
    image, seconds = best_of_three(lambda: viz.image_from_bytes(jpeg, 32))
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    # the plain way: decode every pixel, crop, resize (about 10x slower on a 12 MP photo)
    full, plain = best_of_three(
        lambda: Image.open(io.BytesIO(jpeg)).convert("RGB").crop((504, 0, 3528, 3024)).resize((32, 32), Image.BICUBIC))
    assert seconds < 0.5 * plain, (
        f"{seconds * 1000:.0f} ms vs {plain * 1000:.0f} ms decoding every pixel: draft() unused?")
    assert np.abs(np.asarray(full).astype(int) - image.permute(1, 2, 0).numpy()).mean() < 2  # the same picture
    png, seconds = best_of_three(lambda: viz.image_from_bytes(big_uploads["screenshot.png"], 32))
    assert png.shape == (3, 32, 32) and seconds < 1.0
    # a phone photo stored sideways (EXIF orientation 6: turn 90 degrees clockwise): red left half -> red top half
    sideways = np.zeros((40, 60, 3), np.uint8)
    sideways[:, :30, 0] = 255
    sideways[:, 30:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = viz.image_from_bytes(_encoded(Image.fromarray(sideways), "JPEG", exif=exif.tobytes()), 16).float()
    assert upright[0, :8].mean() > 200 and upright[0, 8:].mean() < 50 and upright[2, 8:].mean() > 200


@pytest.mark.parametrize("name", ["photo.jpg", "screenshot.png"])
def test_vit_explorer_uploads_2mb_photos_in_both_formats(small_vit, images, big_uploads, name):
    content = big_uploads[name]
    explorer = viz.ViTAttentionExplorer(small_vit, images)
    start_picture = explorer.picture.value
    _frontend_upload_v8(explorer.upload, name, content)  # ipywidgets 8, as the front end delivers it
    assert explorer.image_label == f"upload: {name}" and explorer.picture.value != start_picture
    assert explorer.upload.value == ()  # cleared: the file is freed, and the same file can come again
    uploaded_picture = explorer.picture.value
    explorer.image_picker.value = 1
    _frontend_upload_v8(explorer.upload, name, content)  # the same file again
    assert explorer.picture.value == uploaded_picture and explorer.image_label == f"upload: {name}"
    explorer.image_picker.value = 2
    explorer._on_upload({"new": _value_v7(name, content)})  # the handler also reads ipywidgets 7's format
    assert explorer.picture.value == uploaded_picture and explorer.image_label == f"upload: {name}"


def test_vit_explorer_refuses_a_too_big_upload(small_vit, images, monkeypatch):
    explorer = viz.ViTAttentionExplorer(small_vit, images)
    before, label = explorer.picture.value, explorer.image_label
    monkeypatch.setattr(viz.widgets, "MAX_UPLOAD_BYTES", 1000)  # where image_from_bytes reads it
    explorer.upload.value = _value_v8("big.png", _encoded(_photo(100, 100, noise=64), "PNG"))
    assert ("upload failed:</b> big.png: the file is" in explorer.caption.value
            and "over the limit of 0.0 MB" in explorer.caption.value)
    assert explorer.picture.value == before and explorer.image_label == label  # the current image stays


def test_display_widget_bundle(small_vit, images, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **options: shown.append((objects, options)))
    explorer = viz.ViTAttentionExplorer(small_vit, images)
    explorer.show()
    (bundle,), options = shown[-1]
    assert options == {"raw": True}
    assert bundle["text/plain"] == "[ViT attention explorer: run the notebook in JupyterLab or Colab to use it]"
    assert bundle[viz.WIDGET_VIEW_MIMETYPE]["model_id"] == explorer.widget.model_id

    class Widget7:  # ipywidgets 7.x: no _repr_mimebundle_, display callbacks after displaying
        model_id, displayed = "abc123", 0

        def _ipython_display_(self, **kwargs):
            raise AssertionError("it would display by itself")

        def _handle_displayed(self, **kwargs):
            self.displayed += 1

    old = Widget7()
    viz.widgets._display_widget(old, "old")
    (bundle,), _ = shown[-1]
    assert bundle == {"text/plain": "[old: run the notebook in JupyterLab or Colab to use it]",
                      viz.WIDGET_VIEW_MIMETYPE: {"version_major": 2, "version_minor": 0, "model_id": "abc123"}}
    assert old.displayed == 1


def test_detr_explorer_with_too_few_class_names_is_a_clear_error():
    """Issue 13, finding 14: fewer class names than classes gave an IndexError from a callback."""
    from minivit.detr import build_tiny_detr

    torch.manual_seed(0)
    model = build_tiny_detr(num_classes=3, num_queries=5, hidden_dim=32, num_heads=2, dim_feedforward=64,
                            backbone_widths=(8, 16, 16, 16))
    with pytest.raises(ValueError, match="class_names has 2 names but the model predicts 3 classes"):
        viz.DETRAttentionExplorer(model, torch.rand(2, 3, 64, 64), ["square", "circle"], threshold=0.05)


def test_mask_patches_zeroes_the_chosen_patches_and_nothing_else():
    images = torch.ones(2, 3, 8, 8)
    scores = torch.tensor([[[4.0, 3.0], [2.0, 1.0]], [[1.0, 2.0], [3.0, 4.0]]])  # (B, 2, 2) of 4-px patches
    top = viz.mask_patches(images, scores, patch_size=4, count=1, which="top")
    assert top[0, :, :4, :4].eq(0).all() and top[1, :, 4:, 4:].eq(0).all()
    assert top.sum() == 2 * 3 * (64 - 16)  # one 4x4 patch per image and channel
    bottom = viz.mask_patches(images, scores, patch_size=4, count=2, which="bottom")
    assert bottom[0, :, 4:, :].eq(0).all() and bottom[0, :, :4, :].eq(1).all()
    random = viz.mask_patches(images, scores, 4, 3, "random", torch.Generator().manual_seed(0))
    assert (random[:, 0] == 0).flatten(1).sum(dim=1).tolist() == [48, 48]
    assert viz.mask_patches(images, scores, 4, 0).equal(images)


@pytest.mark.parametrize("shape, patch, count, which, message", [
    ((2, 2, 2), 3, 1, "top", "does not tile 8x8"),
    ((2, 2, 2), 4, 5, "top", "count must be between 0 and 4"),
    ((2, 2, 2), 4, 1, "best", "which must be 'top', 'bottom' or 'random'"),
    ((1, 2, 2), 4, 1, "top", "for the same B"),
])
def test_mask_patches_names_bad_arguments(shape, patch, count, which, message):
    with pytest.raises(ValueError, match=message):
        viz.mask_patches(torch.ones(2, 3, 8, 8), torch.ones(shape), patch, count, which)
