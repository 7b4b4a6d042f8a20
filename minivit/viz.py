"""Chapter 7: what attention looks at, as numbers and pictures.

Shapes: L layers, H heads, T tokens (prefix tokens such as the class token first, then the
N = gh * gw patches row by row), B images, Q object queries of DETR.

* :func:`capture_attention`: every layer's and head's weights of a ViT, (L, B, H, T, T), from
  the model's weight-returning path ``forward_with_attention`` (no hooks, no patching);
* :func:`query_maps`, :func:`attention_rollout` (Abnar & Zuidema, 2020);
* :func:`mean_attention_distance` (ViT paper, Fig. 7 right), :func:`position_embedding_similarity`
  (Fig. 7 centre), :func:`patch_embedding_components` (Fig. 7 left);
* :func:`cross_layer_similarity`: attention collapse across depth (DeepViT, Zhou et al. 2021);
* :func:`detr_encoder_attention_at`, :func:`detr_cross_attention_maps`: DETR's maps;
* :class:`ViTAttentionExplorer`, :class:`DETRAttentionExplorer`: ipywidgets explorers (7.7, as on
  Colab, and 8) whose callbacks are plain methods (testable without a browser).
"""
from __future__ import annotations

import html
import io
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import draw_bounding_boxes

from minivit.boxes import box_cxcywh_to_xyxy, denormalize_boxes
from minivit.devices import module_device

# ----------------------------------------------------------------------------- capture


def num_prefix_tokens(model) -> int:
    """Tokens before the patches: 1 for a class token, 0 for a mean-pooled ViT."""
    return model.num_tokens - model.num_patches


@torch.no_grad()
def capture_attention(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a ViT once and return ``(logits (B, classes), attention (L, B, H, T, T))``.

    Uses ``model.forward_with_attention``, the written-out attention path that returns its
    softmax weights; the model is put in eval mode so that no dropout touches the weights.
    The images move to the model's device; the results come back to the CPU, where maps are drawn.
    """
    if not hasattr(model, "forward_with_attention"):
        raise ValueError(f"{type(model).__name__} has no forward_with_attention(images); pass a minivit ViT")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.dtype == torch.uint8:
        raise ValueError(
            f"expected preprocessed float images (B, C, H, W), got dtype {images.dtype} and shape "
            f"{tuple(images.shape)}; convert uint8 images with the model's preprocessing first"
        )
    model.eval()
    logits, attention = model.forward_with_attention(images.to(module_device(model)))  # where the model is
    return logits.cpu(), attention.cpu()  # (B, classes), (L, B, H, T, T), back on the CPU for drawing


def _check_square(attention: torch.Tensor, name: str = "attention") -> None:
    if attention.dim() < 2 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"{name} must end in (T, T) (queries x keys), got shape {tuple(attention.shape)}")


def _check_grid(num_patches: int, grid_size: tuple[int, int]) -> tuple[int, int]:
    grid_h, grid_w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if grid_h * grid_w != num_patches:
        raise ValueError(
            f"a {grid_h}x{grid_w} patch grid has {grid_h * grid_w} patches but the attention has {num_patches} "
            f"patch tokens; check grid_size and num_prefix_tokens"
        )
    return grid_h, grid_w


# ----------------------------------------------------------------------------- maps


def query_maps(attention: torch.Tensor, grid_size, query_index: int = 0, num_prefix_tokens: int = 1) -> torch.Tensor:
    """The attention of one query token (default: token 0, the class token) over the patches.

    attention (..., T, T) -> (..., gh, gw): row ``query_index``, patch columns only (the
    weight on the prefix tokens is left out, so a map need not sum to one).
    """
    _check_square(attention)
    grid_h, grid_w = _check_grid(attention.shape[-1] - num_prefix_tokens, grid_size)
    row = attention[..., query_index, num_prefix_tokens:]  # (..., N)
    return row.reshape(*row.shape[:-1], grid_h, grid_w)


def classifier_maps(attention: torch.Tensor, grid_size, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Where the classifier's input looks: attention (..., T, T) -> (..., gh, gw).

    With a class token (``num_prefix_tokens=1``) this is the class token's row. A mean-pooled
    ViT classifies the average of all tokens, and the attention part of that average is
    ``sum_j (mean_i a_ij) v_j``: its weights are the mean of all query rows, which is what
    we return when there is no prefix token.
    """
    if num_prefix_tokens:
        return query_maps(attention, grid_size, 0, num_prefix_tokens)
    _check_square(attention)
    grid_h, grid_w = _check_grid(attention.shape[-1], grid_size)
    pooled = attention.mean(dim=-2)  # (..., N): the average query's weights
    return pooled.reshape(*pooled.shape[:-1], grid_h, grid_w)


def upsample_maps(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample maps (..., gh, gw) to the image size (..., H, W)."""
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    resized = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return resized.reshape(*lead, *resized.shape[-2:])


def attention_rollout(attention: torch.Tensor, head_fusion: str = "mean", residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) through all layers: attention (L, [B,] H, T, T) -> ([B,] T, T).

    Per layer the heads are fused (mean, or max), the residual connection is accounted for
    by ``0.5 * A + 0.5 * I``, rows are renormalized to sum to one, and the layers are chained
    by matrix products, last layer on the left: ``R = A_L ... A_2 A_1``. Row ``i`` of ``R`` says
    how much input token ``j`` flows into output token ``i``.
    """
    return attention_rollout_per_layer(attention, head_fusion, residual)[-1]


def attention_rollout_per_layer(attention: torch.Tensor, head_fusion: str = "mean", residual: bool = True) -> torch.Tensor:
    """The rollout up to every layer: (L, [B,] H, T, T) -> (L, [B,] T, T); entry ``l`` is ``A_l ... A_1``."""
    _check_square(attention)
    if attention.dim() not in (4, 5):
        raise ValueError(f"attention must be (L, H, T, T) or (L, B, H, T, T), got shape {tuple(attention.shape)}")
    if head_fusion == "mean":
        fused = attention.mean(dim=-3)  # (L, [B,] T, T)
    elif head_fusion == "max":
        fused = attention.amax(dim=-3)
    else:
        raise ValueError(f"head_fusion must be 'mean' or 'max', got {head_fusion!r}")
    if residual:
        eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
        fused = 0.5 * fused + 0.5 * eye
    fused = fused / fused.sum(dim=-1, keepdim=True)
    rollouts, joint = [], None
    for layer_attention in fused:
        joint = layer_attention if joint is None else layer_attention @ joint
        rollouts.append(joint)
    return torch.stack(rollouts)


# ----------------------------------------------------------------------------- ViT paper, Fig. 7


def patch_distance_matrix(grid_size, patch_size: float) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every two patches: (N, N)."""
    grid_h, grid_w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    centres = torch.stack([rows.flatten(), cols.flatten()], dim=1).float() * patch_size  # (N, 2)
    return torch.cdist(centres, centres)  # (N, N)


def mean_attention_distance(attention: torch.Tensor, grid_size, patch_size: float, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Mean attention distance in pixels, the ViT paper's "attention distance" (Fig. 7, right).

    For each query patch: the distance to every key patch, weighted by the attention
    (renormalized over the patches, so the weight on the class token does not count), then
    averaged over the query patches. attention (..., T, T) -> (...), e.g. (L, B, H) -> mean
    over B for the (L, H) plot.
    """
    _check_square(attention)
    num_patches = attention.shape[-1] - num_prefix_tokens
    grid = _check_grid(num_patches, grid_size)
    patch_attention = attention[..., num_prefix_tokens:, num_prefix_tokens:]  # (..., N, N)
    patch_attention = patch_attention / patch_attention.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    distances = patch_distance_matrix(grid, patch_size).to(attention)  # (N, N)
    per_query = (patch_attention * distances).sum(dim=-1)  # (..., N)
    return per_query.mean(dim=-1)


def position_embedding_similarity(pos_embed: torch.Tensor, grid_size, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Cosine similarity of each patch's position embedding with every other: (gh, gw, gh, gw).

    ``result[r, c]`` is the (gh, gw) map of patch (r, c), as in the ViT paper's Fig. 7 (centre).
    """
    if pos_embed is None:
        raise ValueError("this model has no position embeddings (pos_embed='none')")
    table = pos_embed.detach().reshape(-1, pos_embed.shape[-1])[num_prefix_tokens:]  # (N, D)
    grid_h, grid_w = _check_grid(table.shape[0], grid_size)
    unit = F.normalize(table.float(), dim=-1)
    return (unit @ unit.T).reshape(grid_h, grid_w, grid_h, grid_w)


def patch_embedding_components(proj_weight: torch.Tensor, num_components: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal components of the patch-projection filters (ViT paper Fig. 7, left).

    proj_weight (D, C, P, P) (the strided convolution's weight: one filter per embedding
    channel) -> components (k, C, P, P) and the fraction of variance each explains (k,).
    Each component's sign is chosen so that its largest entry is positive.
    """
    if proj_weight.dim() != 4:
        raise ValueError(f"expected a Conv2d weight (D, C, P, P), got shape {tuple(proj_weight.shape)}")
    filters = proj_weight.detach().flatten(1).double()  # (D, C*P*P)
    max_components = min(filters.shape)
    if not 1 <= num_components <= max_components:
        raise ValueError(f"num_components must be between 1 and {max_components}, got {num_components}")
    centred = filters - filters.mean(dim=0)
    _, singular_values, vh = torch.linalg.svd(centred, full_matrices=False)  # vh (r, C*P*P)
    explained = singular_values**2 / (singular_values**2).sum()
    components = vh[:num_components]
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))  # (k, 1)
    components = components * signs
    return components.reshape(num_components, *proj_weight.shape[1:]).float(), explained[:num_components].float()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Scale each image (..., C, H, W) to [0, 1] by its own minimum and maximum (for display)."""
    flat = images.flatten(-3)
    low, high = flat.amin(dim=-1, keepdim=True), flat.amax(dim=-1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(images.shape)


def cross_layer_similarity(attention: torch.Tensor) -> torch.Tensor:
    """DeepViT's cross-layer similarity of attention maps: attention (L, [B,] H, T, T) -> (L, L).

    ``M[p, q]`` is the cosine similarity between column ``t`` of head ``h`` in layer ``p`` and in
    layer ``q`` (how token ``t`` is attended to), averaged over heads, tokens (and images).
    Values near one between neighbouring deep layers are DeepViT's "attention collapse".
    """
    _check_square(attention)
    if attention.dim() not in (4, 5):
        raise ValueError(f"attention must be (L, H, T, T) or (L, B, H, T, T), got shape {tuple(attention.shape)}")
    columns = F.normalize(attention.transpose(-1, -2).float(), dim=-1)  # (L, [B,] H, T keys, T queries)
    columns = columns.reshape(columns.shape[0], -1, columns.shape[-1])  # (L, M, T): M = [B*]H*T columns
    return torch.einsum("pmt,qmt->pqm", columns, columns).mean(dim=-1)  # (L, L)


# ----------------------------------------------------------------------------- DETR


def detr_encoder_attention_at(
    encoder_attention: torch.Tensor, feature_size: tuple[int, int], reference: tuple[int, int], layer: int = -1, image_index: int = 0
) -> torch.Tensor:
    """DETR encoder self-attention of one reference pixel of the feature map: (h, w), mean over heads.

    encoder_attention: (L, B, H, h*w, h*w) (a list of per-layer (B, H, h*w, h*w) is stacked);
    reference: (row, column) on the feature map.
    """
    if isinstance(encoder_attention, (list, tuple)):
        encoder_attention = torch.stack(list(encoder_attention))
    height, width = feature_size
    row, col = reference
    if not (0 <= row < height and 0 <= col < width):
        raise ValueError(f"reference {reference} lies outside the {height}x{width} feature map")
    if encoder_attention.dim() != 5 or encoder_attention.shape[-1] != height * width:
        raise ValueError(
            f"encoder attention must be (layers, B, heads, {height * width}, {height * width}), "
            f"got shape {tuple(encoder_attention.shape)}"
        )
    weights = encoder_attention[layer, image_index, :, row * width + col]  # (H, h*w)
    return weights.mean(dim=0).reshape(height, width)


def detr_cross_attention_maps(
    decoder_cross: torch.Tensor, feature_size: tuple[int, int], layer: int = -1, image_index: int = 0
) -> torch.Tensor:
    """Each object query's cross-attention over the feature map, mean over heads: (Q, h, w).

    decoder_cross: (L, B, H, Q, h*w) from ``DETR.forward_with_attention``.
    """
    if isinstance(decoder_cross, (list, tuple)):
        decoder_cross = torch.stack(list(decoder_cross))
    height, width = feature_size
    if decoder_cross.dim() != 5 or decoder_cross.shape[-1] != height * width:
        raise ValueError(
            f"decoder cross-attention must be (layers, B, heads, queries, {height * width}), "
            f"got shape {tuple(decoder_cross.shape)}"
        )
    weights = decoder_cross[layer, image_index].mean(dim=0)  # (Q, h*w)
    return weights.reshape(-1, height, width)


# ----------------------------------------------------------------------------- images for display


def _as_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) uint8 tensor or float tensor in [0, 1] -> (H, W, 3) uint8 array."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected one image (C, H, W) with 1 or 3 channels, got shape {tuple(image.shape)}")
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()


def overlay_heatmap(
    image: torch.Tensor, heatmap: torch.Tensor, size: int = 256, alpha: float = 0.6, cmap: str = "inferno"
) -> np.ndarray:
    """The image (C, H, W) enlarged to size x size with a min-max scaled heatmap (h, w) on top: (size, size, 3) uint8."""
    return blend_heatmap(enlarge(image, size), heatmap, alpha, cmap)


def blend_heatmap(base: np.ndarray, heatmap: torch.Tensor, alpha: float = 0.6, cmap: str = "inferno") -> np.ndarray:
    """An enlarged image (S, S, 3) uint8 with a min-max scaled heatmap (h, w) blended on top: (S, S, 3) uint8."""
    heat = upsample_maps(heatmap.detach().float().cpu(), base.shape[:2]).numpy()  # (S, S)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    colored = matplotlib.colormaps[cmap](heat, bytes=True)[..., :3].astype(np.float32)  # (S, S, 3) in 0..255
    blended = (1 - alpha) * base.astype(np.float32) + alpha * colored
    return blended.clip(0, 255).round().astype(np.uint8)


def enlarge(image: torch.Tensor, size: int = 256) -> np.ndarray:
    """An image (C, H, W) enlarged to (size, size, 3) uint8 with nearest-neighbour pixels."""
    return np.asarray(Image.fromarray(_as_hwc_uint8(image)).resize((size, size), Image.NEAREST))


def draw_boxes(image_hwc: np.ndarray, boxes_xyxy: torch.Tensor, labels: Sequence[str] | None = None, colors="lime", width: int = 2) -> np.ndarray:
    """Draw boxes (K, 4) in pixel xyxy on an (H, W, 3) uint8 array (torchvision's draw_bounding_boxes)."""
    canvas = torch.from_numpy(np.array(image_hwc, dtype=np.uint8)).permute(2, 0, 1)  # a writable copy
    if len(boxes_xyxy):
        canvas = draw_bounding_boxes(canvas, boxes_xyxy.float(), labels=list(labels) if labels else None, colors=colors, width=width)
    return canvas.permute(1, 2, 0).numpy()


def png_bytes(image_hwc: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG (fast compression) for an ``ipywidgets.Image``."""
    buffer = io.BytesIO()
    Image.fromarray(image_hwc).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# An upload larger than this is refused before decoding. 20 MB holds every ordinary photo (a 12 MP
# phone JPEG is 2-5 MB, a 48-50 MP one 8-15 MB) while bounding what the kernel keeps: the widget
# holds the file and the decoder copies it. (A local Jupyter server drops websocket messages over
# 10 MiB by default, so there a file over ~10 MB never reaches the kernel at all.)
MAX_UPLOAD_BYTES = 20 * 1000 * 1000
# More pixels than this are refused from the header, before decoding: 50 MP admits 48-50 MP phone
# photos; a PNG of that size decodes to 150 MB of RGB (JPEGs are decoded at 1/2-1/8 scale).
MAX_UPLOAD_PIXELS = 50 * 1000 * 1000

# EXIF orientation -> the transpose that shows the photo upright (as ImageOps.exif_transpose)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = getattr(Image, "Transpose", Image)  # the enum since Pillow 9.1, module constants before
_UPRIGHT = {
    2: _TRANSPOSE.FLIP_LEFT_RIGHT, 3: _TRANSPOSE.ROTATE_180, 4: _TRANSPOSE.FLIP_TOP_BOTTOM,
    5: _TRANSPOSE.TRANSPOSE, 6: _TRANSPOSE.ROTATE_270, 7: _TRANSPOSE.TRANSVERSE, 8: _TRANSPOSE.ROTATE_90,
}


def _megabytes(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.1f} MB"


def image_from_bytes(data: bytes, size: int) -> torch.Tensor:
    """Decode an uploaded image file, centre-crop it to a square and resize: (3, size, size) uint8.

    Raises ``ValueError`` with a message for the user for a file that is not an image or is over
    :data:`MAX_UPLOAD_BYTES` or :data:`MAX_UPLOAD_PIXELS`. Big photos are cheap: a JPEG is
    decoded at reduced scale (``draft``), other formats are box-reduced before the bicubic resize,
    and the EXIF orientation of a phone photo is applied."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(
            f"the file is {_megabytes(len(data))}, over the limit of {_megabytes(MAX_UPLOAD_BYTES)}; "
            "upload a smaller copy (the model sees it at a few dozen pixels anyway)"
        )
    try:
        with warnings.catch_warnings():  # PIL warns over 89 MP; the limit below speaks for itself
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as error:
        raise ValueError(f"the image has too many pixels ({error}); the limit is {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels") from error
    except Exception as error:  # PIL raises several types for bad files
        raise ValueError(f"could not read the uploaded file as an image ({error}); upload a PNG or JPEG") from error
    width, height = picture.size
    if width * height > MAX_UPLOAD_PIXELS:
        raise ValueError(
            f"the image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels), over the limit of "
            f"{MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels; upload a smaller copy"
        )
    try:
        orientation = picture.getexif().get(_EXIF_ORIENTATION)
        side = min(width, height)
        if picture.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale, still at least size x size
            scale = picture.draft("RGB", (max(1, size * width // side), max(1, size * height // side)))
            if scale is not None:
                width, height = picture.size
                side = min(width, height)
        picture = picture.convert("RGB")
        left, top = (width - side) // 2, (height - side) // 2
        picture = picture.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side), reducing_gap=3.0)
    except Exception as error:  # a truncated or corrupt file fails only when decoded
        raise ValueError(f"could not read the uploaded file as an image ({error}); upload a PNG or JPEG") from error
    if orientation in _UPRIGHT:
        picture = picture.transpose(_UPRIGHT[orientation])
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """``(file name, content)`` of each file in a ``FileUpload.value`` of either ipywidgets version.

    ipywidgets 8: a tuple of dicts with keys name, type, size, content (memoryview), last_modified;
    ipywidgets 7: a dict ``{name: {"metadata": {name, type, size, lastModified}, "content": bytes}}``."""
    if not value:
        return []
    if isinstance(value, Mapping):  # ipywidgets 7
        return [(str(entry.get("metadata", {}).get("name") or name), bytes(entry["content"])) for name, entry in value.items()]
    return [(str(entry["name"]), bytes(entry["content"])) for entry in value]  # ipywidgets 8


def clear_upload(upload) -> None:
    """Empty a ``FileUpload`` (either version): frees the file and lets the same file be uploaded again
    (an identical new value would not notify). The observer sees an empty value."""
    if isinstance(upload.value, Mapping):  # ipywidgets 7: value is read-only, rebuilt from metadata + data
        upload.metadata, upload.data = [], []  # keep _counter: the front end counts uploads from it
        upload.set_trait("value", {})
    else:
        upload.value = ()


def html_text(text: str) -> str:
    """Plain text (possibly holding a user's file name) as HTML: escaped, line breaks kept."""
    return html.escape(str(text)).replace("\n", "<br>")


# ----------------------------------------------------------------------------- explorers

HEAD_MEAN, HEAD_ROLLOUT = "mean of heads", "rollout"
QUERY_CLASS_TOKEN, QUERY_POOLED, QUERY_PATCH = "class token", "mean of all tokens", "patch"
ALL_ABOVE_THRESHOLD = "all above threshold"


WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"


def _widget_mimebundle(widget) -> dict:
    """The display data of a widget: its view (model id) and a text/plain fallback.

    ipywidgets 8 implements ``_repr_mimebundle_``; 7.x only ``_ipython_display_``, which displays
    by itself, so its bundle (the same one, protocol 2.0) is built here."""
    make_bundle = getattr(widget, "_repr_mimebundle_", None)
    if callable(make_bundle):  # ipywidgets 8
        return dict(make_bundle())
    return {"text/plain": repr(widget)[:110], WIDGET_VIEW_MIMETYPE: {"version_major": 2, "version_minor": 0, "model_id": widget.model_id}}


def _display_widget(widget, name: str) -> None:
    """Display a widget (ipywidgets 7 or 8); a saved notebook opened without its kernel shows a
    line, not the widget's repr."""
    from IPython.display import display

    bundle = _widget_mimebundle(widget)
    bundle["text/plain"] = f"[{name}: run the notebook in JupyterLab or Colab to use it]"
    display(bundle, raw=True)
    if not callable(getattr(widget, "_repr_mimebundle_", None)) and callable(getattr(widget, "_handle_displayed", None)):
        widget._handle_displayed()  # what 7.x's _ipython_display_ does after displaying: on_displayed callbacks


@contextmanager
def one_thread():
    """Run tiny tensor work (one image, one map) on one thread: for such small operations the
    thread pool's synchronization costs more than it saves (on a busy 2-core CPU, 40x more)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _default_preprocess(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


class ViTAttentionExplorer:
    """Explore a ViT's attention: image, layer, head (or their mean, or rollout) and query token.

    ``images`` (N, 3, H, W) uint8 are the picker's choices (an upload adds one more);
    ``preprocess`` turns uint8 images into the model's input. Per image, one forward pass
    stores every layer's and head's weights, their head mean and the rollout up to each
    layer, so a widget change only slices, colours and encodes a small map. The callbacks
    are ordinary methods: set ``explorer.layer.value = 2`` and ``explorer.picture.value``
    (PNG bytes) changes, with or without a browser.
    """

    def __init__(
        self,
        model,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] = _default_preprocess,
        display_size: int = 256,
    ):
        import ipywidgets as widgets

        if images.dim() != 4 or images.dtype != torch.uint8 or len(images) == 0:
            raise ValueError(f"images must be a non-empty uint8 batch (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.model, self.images, self.labels = model.eval(), images, labels
        self.class_names, self.preprocess, self.display_size = class_names, preprocess, display_size
        self.num_prefix_tokens = num_prefix_tokens(model)
        self.grid_size, self.patch_size = model.grid_size, model.patch_size
        depth, num_heads = model.config["depth"], model.config["num_heads"]
        grid = self.grid_size

        self.image_picker = widgets.Dropdown(
            options=[(self._image_name(i), i) for i in range(len(images))], description="image"
        )
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload")
        self.layer = widgets.IntSlider(value=depth - 1, min=0, max=depth - 1, description="layer")
        self.head = widgets.Dropdown(
            options=[HEAD_MEAN, HEAD_ROLLOUT] + [f"head {h}" for h in range(num_heads)], description="head"
        )
        query_options = [QUERY_CLASS_TOKEN if self.num_prefix_tokens else QUERY_POOLED, QUERY_PATCH]
        self.query = widgets.ToggleButtons(options=query_options, description="query")
        labels = {"description_width": "initial"}  # show the whole description
        self.row = widgets.IntSlider(value=grid // 2, min=0, max=grid - 1, description="patch row", style=labels)
        self.col = widgets.IntSlider(value=grid // 2, min=0, max=grid - 1, description="patch column", style=labels)
        self.picture = widgets.Image(format="png", width=2 * display_size, height=display_size)
        self.caption = widgets.HTML()
        for widget, name in ((self.layer, "layer"), (self.row, "row"), (self.col, "col"), (self.picture, "picture")):
            widget.add_class(f"minivit-vit-{name}")  # stable handles for the browser test

        self.image_picker.observe(self._on_pick, names="value")
        self.upload.observe(self._on_upload, names="value")
        for widget in (self.layer, self.head, self.query):
            widget.observe(self.redraw, names="value")
        for widget in (self.row, self.col):
            widget.observe(self._on_patch, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.image_picker, self.upload]),
            widgets.HBox([self.layer, self.head]),
            self.query,
            widgets.HBox([self.row, self.col]),
            self.picture,
            self.caption,
        ])
        self.last_redraw_seconds = float("nan")
        self.set_image(images[0], self._image_name(0))

    def _image_name(self, index: int) -> str:
        if self.labels is None:
            return f"test image {index}"
        label = int(self.labels[index])
        return f"test image {index}: {self.class_names[label] if self.class_names else label}"

    # --- per image: one forward pass, everything a redraw needs
    def set_image(self, image: torch.Tensor, name: str) -> None:
        """Make ``image`` (3, H, W) uint8 the current image: run the model once and redraw."""
        with one_thread():
            logits, attention = capture_attention(self.model, self.preprocess(image[None]))
            self.image, self.image_label = image, name
            self.enlarged = enlarge(image, self.display_size)  # (S, S, 3), reused by every redraw
            self.probabilities = logits.softmax(dim=-1)[0]  # (classes,)
            self.attention = attention[:, 0].float()  # (L, H, T, T)
            self.head_mean = self.attention.mean(dim=1)  # (L, T, T)
            self.rollout = attention_rollout_per_layer(self.attention)  # (L, T, T)
        self.redraw()

    def _on_pick(self, change) -> None:
        index = change["new"]
        self.set_image(self.images[index], self._image_name(index))

    def _on_upload(self, change) -> None:
        files = uploaded_files(change["new"])
        if not files:  # also the echo of clear_upload below
            return
        name, content = files[-1]
        clear_upload(self.upload)  # free the file; uploading the same file again works
        try:
            image = image_from_bytes(content, self.model.image_size)
        except ValueError as error:
            self.caption.value = f"<b>upload failed:</b> {html_text(f'{name}: {error}')}"
            return
        self.set_image(image, f"upload: {name}")

    def _on_patch(self, change) -> None:
        if self.query.value != QUERY_PATCH:
            self.query.value = QUERY_PATCH  # choosing a patch makes it the query (this redraws)
        else:
            self.redraw()

    # --- per change: slice, colour, encode
    def current_map(self) -> torch.Tensor:
        """The (gh, gw) map the widgets select."""
        layer, head = self.layer.value, self.head.value
        if head == HEAD_MEAN:
            matrix = self.head_mean[layer]
        elif head == HEAD_ROLLOUT:
            matrix = self.rollout[layer]
        else:
            matrix = self.attention[layer, int(head.split()[-1])]
        if self.query.value != QUERY_PATCH:  # what the classifier reads
            return classifier_maps(matrix, self.grid_size, self.num_prefix_tokens)
        query = self.num_prefix_tokens + self.row.value * self.grid_size + self.col.value
        return query_maps(matrix, self.grid_size, query, self.num_prefix_tokens)

    def render(self) -> np.ndarray:
        """The picture: the image (query patch framed) beside the attention map over it: (S, 2S, 3) uint8."""
        size = self.display_size
        left = self.enlarged
        if self.query.value == QUERY_PATCH:
            cell = size / self.grid_size
            box = torch.tensor([[self.col.value * cell, self.row.value * cell, (self.col.value + 1) * cell, (self.row.value + 1) * cell]])
            left = draw_boxes(left, box, colors="cyan", width=3)
        right = blend_heatmap(self.enlarged, self.current_map())
        return np.concatenate([left, right], axis=1)

    def redraw(self, change=None) -> None:
        """Recompute the picture and caption from the widgets (every widget's callback)."""
        start = time.perf_counter()
        with one_thread():
            attention_map = self.current_map()
            self.picture.value = png_bytes(self.render())
        self.last_redraw_seconds = time.perf_counter() - start
        self.caption.value = html_text(self.describe_current(attention_map))  # the label may hold a file name

    def describe_current(self, attention_map: torch.Tensor | None = None) -> str:
        attention_map = self.current_map() if attention_map is None else attention_map
        top = int(self.probabilities.argmax())
        predicted = self.class_names[top] if self.class_names else str(top)
        peak_row, peak_col = divmod(int(attention_map.argmax()), self.grid_size)
        query = self.query.value if self.query.value != QUERY_PATCH else f"patch (row {self.row.value}, column {self.col.value})"
        return (
            f"{self.image_label}; predicted {predicted} ({self.probabilities[top]:.0%})\n"
            f"layer {self.layer.value}, {self.head.value}, query {query}: strongest on patch "
            f"(row {peak_row}, column {peak_col}), weight {attention_map.max():.3f}"
        )

    def summary(self) -> str:
        """A plain-text account of the explorer (what a run without a front end prints)."""
        layers, heads, tokens, _ = self.attention.shape
        return (
            f"ViT attention explorer: {len(self.images)} images to pick (or upload one), {layers} layers x "
            f"{heads} heads, {tokens} tokens ({self.grid_size}x{self.grid_size} patches of {self.patch_size} px"
            f"{' + class token' if self.num_prefix_tokens else ''}).\n"
            + self.describe_current()
            + f"\nlast redraw took {self.last_redraw_seconds * 1000:.0f} ms"
        )

    def show(self) -> None:
        """Display the widgets (JupyterLab, Colab) and print the plain summary (seen everywhere)."""
        _display_widget(self.widget, "ViT attention explorer" if isinstance(self, ViTAttentionExplorer) else "DETR attention explorer")
        print(self.summary())


def _identity(images: torch.Tensor) -> torch.Tensor:
    return images


class DETRAttentionExplorer:
    """Explore what DETR's object queries look at: per query its box, class, score and
    decoder cross-attention map (mean over heads), or all queries above a threshold.

    ``images`` (N, 3, H, W) float in [0, 1] (or uint8) are shown; ``preprocess`` turns them
    into the model's input. One forward pass per image; a widget change only redraws.
    """

    def __init__(
        self,
        model,
        images: torch.Tensor,
        class_names: Sequence[str],
        preprocess: Callable[[torch.Tensor], torch.Tensor] = _identity,
        threshold: float = 0.7,
        display_size: int = 256,
    ):
        import ipywidgets as widgets

        if images.dim() != 4 or len(images) == 0:
            raise ValueError(f"images must be a non-empty batch (N, 3, H, W), got shape {tuple(images.shape)}")
        self.model, self.class_names, self.preprocess = model.eval(), list(class_names), preprocess
        self.images = images.float() / 255 if images.dtype == torch.uint8 else images
        self.display_size = display_size
        num_layers = len(model.transformer.decoder.layers)
        self.image_picker = widgets.Dropdown(options=[(f"image {i}", i) for i in range(len(images))], description="image")
        self.threshold = widgets.FloatSlider(value=threshold, min=0.05, max=0.95, step=0.05, description="threshold")
        self.query = widgets.Dropdown(description="query", layout=widgets.Layout(width="360px"))
        self.layer = widgets.IntSlider(
            value=num_layers - 1, min=0, max=num_layers - 1, description="decoder layer", style={"description_width": "initial"}
        )
        self.picture = widgets.Image(format="png", width=2 * display_size, height=display_size)
        self.caption = widgets.HTML()
        self.picture.add_class("minivit-detr-picture")
        self._updating_options = False
        self.image_picker.observe(lambda change: self.set_image(change["new"]), names="value")
        self.threshold.observe(self._on_threshold, names="value")
        for widget in (self.query, self.layer):
            widget.observe(self.redraw, names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.image_picker, self.threshold]),
            widgets.HBox([self.query, self.layer]),
            self.picture,
            self.caption,
        ])
        self.set_image(0)

    @torch.no_grad()
    def set_image(self, index: int) -> None:
        """Run DETR once on image ``index``; keep every query's prediction and cross-attention."""
        self.image = self.images[index]
        self.enlarged = enlarge(self.image, self.display_size)  # (S, S, 3), reused by every redraw
        with one_thread():
            outputs, attention = self.model.forward_with_attention(self.preprocess(self.image[None]))
        probabilities = outputs["pred_logits"][0].softmax(dim=-1)[:, :-1]  # (Q, classes): without "no object"
        self.scores, self.labels = probabilities.max(dim=-1)  # (Q,)
        height, width = self.image.shape[-2:]
        self.boxes = denormalize_boxes(box_cxcywh_to_xyxy(outputs["pred_boxes"][0]), (height, width))  # (Q, 4) pixels
        self.feature_size = attention["feature_size"]
        cross = attention["decoder_cross"][:, 0].mean(dim=1)  # (L, Q, h*w)
        self.cross_maps = cross.reshape(*cross.shape[:2], *self.feature_size)  # (L, Q, h, w)
        self._update_query_options()

    def _on_threshold(self, change) -> None:
        self._update_query_options()

    def _update_query_options(self) -> None:
        options = [(f"{ALL_ABOVE_THRESHOLD} ({len(self.kept_queries())})", ALL_ABOVE_THRESHOLD)]
        order = torch.argsort(self.scores, descending=True).tolist()
        options += [(f"query {q}: {self.class_names[self.labels[q]]} {self.scores[q]:.2f}", q) for q in order]
        current = self.query.value
        self._updating_options = True  # setting options fires value changes: redraw once, at the end
        try:
            self.query.options = options
            self.query.value = current if current in [value for _, value in options] else ALL_ABOVE_THRESHOLD
        finally:
            self._updating_options = False
        self.redraw()

    def kept_queries(self) -> list[int]:
        """The queries whose best class scores above the threshold."""
        return torch.nonzero(self.scores > self.threshold.value).flatten().tolist()

    def selected_queries(self) -> list[int]:
        return self.kept_queries() if self.query.value == ALL_ABOVE_THRESHOLD else [self.query.value]

    def render(self) -> np.ndarray:
        """The image with the selected boxes beside their (summed) cross-attention: (S, 2S, 3) uint8."""
        size, queries = self.display_size, self.selected_queries()
        scale = size / self.image.shape[-1]
        labels = [f"{self.class_names[self.labels[q]]} {self.scores[q]:.2f}" for q in queries]
        colors = [tuple(int(255 * v) for v in matplotlib.colormaps["tab10"](i % 10)[:3]) for i in range(len(queries))]
        left = draw_boxes(self.enlarged, self.boxes[queries] * scale, labels, colors=colors or "lime")
        maps = self.cross_maps[self.layer.value, queries]  # (K, h, w)
        if len(queries) == 0:
            right = self.enlarged // 3  # nothing above the threshold: a dimmed image
        else:
            normalized = maps / maps.flatten(1).amax(dim=1)[:, None, None]
            right = blend_heatmap(self.enlarged, normalized.sum(dim=0))
        return np.concatenate([left, right], axis=1)

    def redraw(self, change=None) -> None:
        """Recompute the picture and caption from the widgets."""
        if self._updating_options:
            return
        start = time.perf_counter()
        with one_thread():
            self.picture.value = png_bytes(self.render())
        self.last_redraw_seconds = time.perf_counter() - start
        self.caption.value = html_text(self.describe_current())

    def describe_current(self) -> str:
        lines = []
        for q in self.selected_queries():
            box = ", ".join(f"{v:.0f}" for v in self.boxes[q].tolist())
            lines.append(f"query {q}: {self.class_names[self.labels[q]]}, score {self.scores[q]:.2f}, box (x1, y1, x2, y2) = ({box}) px")
        return "\n".join(lines) if lines else f"no query scores above {self.threshold.value:.2f}"

    def summary(self) -> str:
        layers, queries = self.cross_maps.shape[:2]
        return (
            f"DETR attention explorer: {len(self.images)} images, {queries} object queries, {layers} decoder layers, "
            f"feature map {self.feature_size[0]}x{self.feature_size[1]}; {len(self.kept_queries())} queries above "
            f"{self.threshold.value:.2f} on the current image:\n" + self.describe_current()
        )

    def show(self) -> None:
        """Display the widgets (JupyterLab, Colab) and print the plain summary (seen everywhere)."""
        _display_widget(self.widget, "ViT attention explorer" if isinstance(self, ViTAttentionExplorer) else "DETR attention explorer")
        print(self.summary())


# ----------------------------------------------------------------------------- figures


def plot_map_grid(
    images: torch.Tensor, maps: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
    size: int = 96, panel_inches: float = 1.4,
):
    """Heatmaps (rows, cols, gh, gw) over images (one (C, H, W) for all rows, or (rows, C, H, W)), one small panel each."""
    import matplotlib.pyplot as plt

    rows, cols = maps.shape[:2]
    images = images.expand(rows, *images.shape) if images.dim() == 3 else images
    figsize = (panel_inches * (cols + 1) + 0.8, panel_inches * rows + 0.6)
    figure, axes = plt.subplots(rows, cols + 1, figsize=figsize, squeeze=False, dpi=60)
    for r in range(rows):
        enlarged = enlarge(images[r], size)
        axes[r, 0].imshow(enlarged)
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center")
        for c in range(cols):
            axes[r, c + 1].imshow(blend_heatmap(enlarged, maps[r, c]))
            if r == 0:
                axes[r, c + 1].set_title(col_labels[c], fontsize=9)
    for axis in axes.flat:
        axis.set_xticks([]), axis.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_mean_attention_distance(distances: dict[str, torch.Tensor], image_size: int, uniform_distance: float | None = None):
    """One panel per model: each head's mean attention distance (pixels) against its layer (ViT Fig. 7 right).

    ``uniform_distance``: drawn as a dashed line, the distance of attention spread evenly over the image.
    """
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(distances), figsize=(4.5 * len(distances), 3.6), sharey=True, squeeze=False)
    for axis, (name, per_layer_head) in zip(axes[0], distances.items()):
        per_layer_head = per_layer_head.detach().cpu().numpy()
        layers, heads = per_layer_head.shape
        for head in range(heads):
            axis.scatter(np.arange(layers), per_layer_head[:, head], s=18, label=f"head {head}")
        axis.plot(np.arange(layers), per_layer_head.mean(axis=1), color="black", lw=1, label="mean of heads")
        if uniform_distance is not None:
            axis.axhline(uniform_distance, color="gray", ls="--", lw=1, label="uniform attention")
        axis.set_title(name)
        axis.set_xlabel("layer (network depth)")
        axis.set_xticks(range(layers))
        axis.set_ylim(0, image_size * 0.8)
    axes[0, 0].set_ylabel("mean attention distance (pixels)")
    axes[0, -1].legend(fontsize=7, loc="lower right")
    figure.suptitle(f"Mean attention distance per head ({image_size}x{image_size}-pixel images)")
    figure.tight_layout()
    return figure


def plot_position_similarity(similarity: torch.Tensor):
    """The (gh, gw) grid of (gh, gw) cosine-similarity maps of the position embeddings (ViT Fig. 7 centre)."""
    import matplotlib.pyplot as plt

    similarity = similarity.detach().cpu().numpy()
    grid_h, grid_w = similarity.shape[:2]
    figure, axes = plt.subplots(grid_h, grid_w, figsize=(0.8 * grid_w + 1.2, 0.8 * grid_h + 0.6))
    for r in range(grid_h):
        for c in range(grid_w):
            shown = axes[r, c].imshow(similarity[r, c], vmin=-1, vmax=1, cmap="viridis")
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(str(r), rotation=0, ha="right", va="center")
    for c in range(grid_w):
        axes[-1, c].set_xlabel(str(c))
    figure.supxlabel("input patch column")
    figure.supylabel("input patch row")
    figure.suptitle("Position embedding similarity (cosine)")
    figure.colorbar(shown, ax=axes, shrink=0.6, label="cosine similarity")
    return figure


def plot_patch_components(components: torch.Tensor, explained: torch.Tensor, title: str):
    """Principal components of the patch filters (k, 3, P, P) drawn as RGB patches (ViT Fig. 7 left)."""
    import matplotlib.pyplot as plt

    count = len(components)
    cols = min(count, 7)
    rows = math.ceil(count / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.5), squeeze=False)
    pictures = to_unit_range(components)
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([]), axis.set_yticks([])
        if index < count:
            axis.imshow(pictures[index].permute(1, 2, 0).numpy(), interpolation="nearest")
            axis.set_title(f"PC{index + 1} {explained[index]:.0%}", fontsize=8)
        else:
            axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_cross_layer_similarity(similarity: torch.Tensor, title: str):
    """DeepViT's cross-layer similarity: the (L, L) matrix and each layer's similarity with the next."""
    import matplotlib.pyplot as plt

    similarity = similarity.detach().cpu().numpy()
    layers = similarity.shape[0]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    shown = left.imshow(similarity, vmin=0, vmax=1, cmap="magma")
    left.set_xlabel("layer q"), left.set_ylabel("layer p"), left.set_title("cosine similarity of attention maps")
    left.set_xticks(range(layers)), left.set_yticks(range(layers))
    figure.colorbar(shown, ax=left, label="similarity")
    neighbours = similarity.diagonal(offset=1)
    right.plot(range(layers - 1), neighbours, marker="o")
    right.set_ylim(0, 1.05)
    right.set_xticks(range(layers - 1), [f"{p}-{p + 1}" for p in range(layers - 1)])
    right.set_xlabel("layer pair (p, p+1)"), right.set_ylabel("similarity"), right.set_title("each layer vs. the next")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_detr_encoder_attention(image: torch.Tensor, encoder_attention: torch.Tensor, feature_size, references, layer: int = -1, size: int = 192):
    """DETR encoder self-attention (mean of heads) at a few reference points (row, col) of the feature map."""
    import matplotlib.pyplot as plt

    height, width = feature_size
    image_h, image_w = image.shape[-2:]
    extent = (0, image_w, image_h, 0)  # axes in the image's own pixels
    figure, axes = plt.subplots(1, len(references) + 1, figsize=(2.6 * (len(references) + 1), 3), dpi=64)
    axes[0].imshow(enlarge(image, size), extent=extent)
    for index, (row, col) in enumerate(references):
        point = dict(x=[(col + 0.5) * image_w / width], y=[(row + 0.5) * image_h / height], s=60, color=f"C{index}", edgecolors="white")
        axes[0].scatter(**point)
        attention_map = detr_encoder_attention_at(encoder_attention, feature_size, (row, col), layer)
        axes[index + 1].imshow(overlay_heatmap(image, attention_map, size), extent=extent)
        axes[index + 1].scatter(**point)
        axes[index + 1].set_title(f"reference (row {row}, col {col})", fontsize=9)
    axes[0].set_title("image and reference points", fontsize=9)
    for axis in axes:
        axis.set_xlabel("x (pixels)", fontsize=8)
    axes[0].set_ylabel("y (pixels)", fontsize=8)
    layer_number = layer % len(encoder_attention)
    figure.suptitle(f"DETR encoder self-attention (layer {layer_number}, mean of heads; feature map {height}x{width})")
    figure.tight_layout()
    return figure


def plot_detr_queries(image: torch.Tensor, boxes: torch.Tensor, labels, scores, maps: torch.Tensor, class_names, size: int = 192):
    """Per predicted object: its box (top) and its query's decoder cross-attention (bottom), as in the DETR paper."""
    import matplotlib.pyplot as plt

    count = max(len(boxes), 1)
    figure, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.6), squeeze=False, dpi=56)
    scale = size / image.shape[-1]
    for index in range(len(boxes)):
        name = f"{class_names[int(labels[index])]} {float(scores[index]):.2f}"
        color = tuple(int(255 * v) for v in matplotlib.colormaps["tab10"](index % 10)[:3])
        axes[0, index].imshow(draw_boxes(enlarge(image, size), boxes[index : index + 1] * scale, [name], colors=[color]))
        axes[0, index].set_title(name, fontsize=9)
        axes[1, index].imshow(overlay_heatmap(image, maps[index], size))
    if len(boxes) == 0:
        axes[0, 0].imshow(enlarge(image, size))
        axes[0, 0].set_title("no detection above the threshold", fontsize=9)
        axes[1, 0].axis("off")
    axes[0, 0].set_ylabel("predicted box")
    axes[1, 0].set_ylabel("cross-attention")
    for axis in axes.flat:
        axis.set_xticks([]), axis.set_yticks([])
    figure.suptitle("DETR: each detection's object query, its box and where it attends (last decoder layer)")
    figure.tight_layout()
    return figure
