"""Where the explorers meet ipywidgets and the user's files, the same under ipywidgets 7.7 (Colab) and 8.

* uploads: :func:`uploaded_files` reads a ``FileUpload`` value of either version, :func:`clear_upload`
  empties one, :func:`image_from_bytes` decodes a photo within :data:`MAX_UPLOAD_BYTES` and
  :data:`MAX_UPLOAD_PIXELS`;
* captions: :func:`html_text` escapes plain text (a user's file name, a class name) for an HTML widget;
* display: :func:`_display_widget` shows a widget under either version, with a line of text for a
  notebook opened without its kernel.

Nothing here imports ipywidgets: the functions take the widgets they are given.
"""
from __future__ import annotations

import html
import io
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

# ----------------------------------------------------------------------------- uploads

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


def _to_8_bit(picture: Image.Image) -> Image.Image:
    """16-bit grayscale (PIL modes ``I;16*``, and ``I`` as PNG decodes it) scaled to 8 bits, not clipped
    at 255 as ``convert("RGB")`` does; other modes unchanged."""
    if not (picture.mode.startswith("I;16") or picture.mode == "I"):
        return picture
    pixels = np.asarray(picture, dtype=np.float64) / 257  # 0..65535 -> 0..255
    return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8))  # (H, W) uint8: mode L


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
        raise ValueError(
            f"the image has too many pixels ({error}); the limit is {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels"
        ) from error
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
        picture = _to_8_bit(picture).convert("RGB")
        left, top = (width - side) // 2, (height - side) // 2
        square = (left, top, left + side, top + side)
        picture = picture.resize((size, size), Image.BICUBIC, box=square, reducing_gap=3.0)
    except Exception as error:  # a truncated or corrupt file fails only when decoded
        raise ValueError(f"could not read the uploaded file as an image ({error}); upload a PNG or JPEG") from error
    if orientation in _UPRIGHT:
        picture = picture.transpose(_UPRIGHT[orientation])
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)  # (size, size, 3) -> (3, size, size)


def uploaded_files(value) -> list[tuple[str, bytes]]:
    """``(file name, content)`` of each file in a ``FileUpload.value`` of either ipywidgets version.

    ipywidgets 8: a tuple of dicts with keys name, type, size, content (memoryview), last_modified;
    ipywidgets 7: a dict ``{name: {"metadata": {name, type, size, lastModified}, "content": bytes}}``."""
    if not value:
        return []
    if isinstance(value, Mapping):  # ipywidgets 7
        return [(str(entry.get("metadata", {}).get("name") or name), bytes(entry["content"]))
                for name, entry in value.items()]
    return [(str(entry["name"]), bytes(entry["content"])) for entry in value]  # ipywidgets 8


def clear_upload(upload) -> None:
    """Empty a ``FileUpload`` (either version): frees the file and lets the same file be uploaded again
    (an identical new value would not notify). The observer sees an empty value."""
    if isinstance(upload.value, Mapping):  # ipywidgets 7: value is read-only, rebuilt from metadata + data
        upload.metadata, upload.data = [], []  # keep _counter: the front end counts uploads from it
        upload.set_trait("value", {})
    else:
        upload.value = ()


# ----------------------------------------------------------------------------- captions and display


def html_text(text: str) -> str:
    """Plain text (possibly holding a user's file name) as HTML: escaped, line breaks kept."""
    return html.escape(str(text)).replace("\n", "<br>")


WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"


def _widget_mimebundle(widget) -> dict:
    """The display data of a widget: its view (model id) and a text/plain fallback.

    ipywidgets 8 implements ``_repr_mimebundle_``; 7.x only ``_ipython_display_``, which displays
    by itself, so its bundle (the same one, protocol 2.0) is built here."""
    make_bundle = getattr(widget, "_repr_mimebundle_", None)
    if callable(make_bundle):  # ipywidgets 8
        return dict(make_bundle())
    view = {"version_major": 2, "version_minor": 0, "model_id": widget.model_id}
    return {"text/plain": repr(widget)[:110], WIDGET_VIEW_MIMETYPE: view}


def _display_widget(widget, name: str) -> None:
    """Display a widget (ipywidgets 7 or 8); a saved notebook opened without its kernel shows a
    line, not the widget's repr."""
    from IPython.display import display

    bundle = _widget_mimebundle(widget)
    bundle["text/plain"] = f"[{name}: run the notebook in JupyterLab or Colab to use it]"
    display(bundle, raw=True)
    is_version_7 = not callable(getattr(widget, "_repr_mimebundle_", None))
    if is_version_7 and callable(getattr(widget, "_handle_displayed", None)):
        widget._handle_displayed()  # what 7.x's _ipython_display_ does after displaying: on_displayed callbacks
