"""Chapter 7's ipywidgets explorers (ipywidgets 7.7, as on Colab, and 8) on one base class.

:class:`AttentionExplorer` holds what both share: the image picker, the picture (PNG bytes) and its
caption, the redraw (timed, on one thread, the caption escaped), the layout, display and the plain
summary. :class:`ViTAttentionExplorer` adds layer, head, query token, patch and upload;
:class:`DETRAttentionExplorer` adds threshold, object query and decoder layer. The callbacks are
plain methods: set ``explorer.layer.value = 2`` and ``explorer.picture.value`` changes, with or
without a browser. ipywidgets is imported when an explorer is built.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from minivit.boxes import box_cxcywh_to_xyxy, denormalize_boxes
from minivit.data.augment import to_float
from minivit.devices import cpu_threads, timed
from minivit.viz.maps import (
    attention_rollout_per_layer,
    capture_attention,
    classifier_maps,
    num_prefix_tokens,
    query_maps,
)
from minivit.viz.render import blend_heatmap, draw_boxes, enlarge, png_bytes, tab10_color
from minivit.viz.widgets import _display_widget, clear_upload, html_text, image_from_bytes, uploaded_files

HEAD_MEAN, HEAD_ROLLOUT = "mean of heads", "rollout"
QUERY_CLASS_TOKEN, QUERY_POOLED, QUERY_PATCH = "class token", "mean of all tokens", "patch"
ALL_ABOVE_THRESHOLD = "all above threshold"


def one_thread():
    """Run tiny tensor work (one image, one map) on one thread: for such small operations the
    thread pool's synchronization costs more than it saves (on a busy 2-core CPU, 40x more)."""
    return cpu_threads(1)


class AttentionExplorer:
    """What every explorer has: an image picker, a picture with a caption below, one redraw.

    A subclass sets :attr:`title` and :attr:`css_name`, builds its own controls, passes them to
    :meth:`_lay_out`, and writes :meth:`_on_pick` (the picker's callback), :meth:`render` (the
    picture), :meth:`describe_current` (the caption's plain text) and :meth:`overview` (the
    summary's first line). Its widgets' callbacks call :meth:`redraw`.
    """

    title = "attention explorer"  # names the explorer in show() and summary()
    css_name = "explorer"  # the picture's CSS class is minivit-{css_name}-picture: a handle for the browser test

    def __init__(self, model, images: torch.Tensor, display_size: int):
        import ipywidgets as widgets

        self.model, self.images, self.display_size = model.eval(), images, display_size
        names = [(self._image_name(i), i) for i in range(len(images))]
        self.image_picker = widgets.Dropdown(options=names, description="image")
        self.picture = widgets.Image(format="png", width=2 * display_size, height=display_size)  # (S, 2S)
        self.caption = widgets.HTML()
        self.picture.add_class(f"minivit-{self.css_name}-picture")
        self.caption.add_class(f"minivit-{self.css_name}-caption")
        self.image_picker.observe(self._on_pick, names="value")
        self.widget = None  # the whole explorer, once the subclass has laid out its controls
        self.last_redraw_seconds = float("nan")
        self._redraws_held = False

    def _lay_out(self, *controls) -> None:
        """The explorer's widget: the controls (rows of widgets), then the picture and its caption."""
        import ipywidgets as widgets

        self.widget = widgets.VBox([*controls, self.picture, self.caption])

    def _image_name(self, index: int) -> str:
        return f"image {index}"

    # --- per change: draw, encode, caption
    def redraw(self, change=None) -> None:
        """Recompute the picture and caption from the widgets (every widget's callback)."""
        if self._redraws_held:
            return
        with timed() as clock, one_thread():
            picture, caption = self.draw()
            self.picture.value = png_bytes(picture)
        self.last_redraw_seconds = clock.seconds
        self.caption.value = html_text(caption)  # the text may hold a file name or a class name

    def draw(self) -> tuple[np.ndarray, str]:
        """The picture (S, 2S, 3) uint8 and the caption's plain text for the widgets' values."""
        return self.render(), self.describe_current()

    @contextmanager
    def _one_redraw(self):
        """Change several widgets (each change would redraw) and redraw once, at the end."""
        self._redraws_held = True
        try:
            yield
        finally:
            self._redraws_held = False
        self.redraw()

    # --- for a reader without a front end
    def summary(self) -> str:
        """A plain-text account of the explorer (what a run without a front end prints)."""
        return f"{self.title}: {self.overview()}\n{self.describe_current()}"

    def show(self) -> None:
        """Display the widgets (JupyterLab, Colab) and print the plain summary (seen everywhere)."""
        _display_widget(self.widget, self.title)
        print(self.summary())

    # --- what each explorer writes
    def _on_pick(self, change) -> None:
        raise NotImplementedError

    def render(self) -> np.ndarray:
        raise NotImplementedError

    def describe_current(self) -> str:
        raise NotImplementedError

    def overview(self) -> str:
        raise NotImplementedError


class ViTAttentionExplorer(AttentionExplorer):
    """Explore a ViT's attention: image, layer, head (or their mean, or rollout) and query token.

    ``images`` (N, 3, H, W) uint8 are the picker's choices (an upload adds one more);
    ``preprocess`` turns uint8 images into the model's input. Per image, one forward pass
    stores every layer's and head's weights, their head mean and the rollout up to each
    layer, so a widget change only slices, colours and encodes a small map.
    """

    title, css_name = "ViT attention explorer", "vit"

    def __init__(
        self,
        model,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        class_names: Sequence[str] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] = to_float,
        display_size: int = 256,
    ):
        import ipywidgets as widgets

        if images.dim() != 4 or images.dtype != torch.uint8 or len(images) == 0:
            raise ValueError(
                f"images must be a non-empty uint8 batch (N, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        self.labels, self.class_names, self.preprocess = labels, class_names, preprocess  # the picker names images
        super().__init__(model, images, display_size)
        self.num_prefix_tokens = num_prefix_tokens(model)
        self.grid_size, self.patch_size = model.grid_size, model.patch_size
        depth, num_heads, grid = model.config["depth"], model.config["num_heads"], self.grid_size

        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="upload")
        self.layer = widgets.IntSlider(value=depth - 1, min=0, max=depth - 1, description="layer")
        heads = [HEAD_MEAN, HEAD_ROLLOUT] + [f"head {h}" for h in range(num_heads)]
        self.head = widgets.Dropdown(options=heads, description="head")
        query_options = [QUERY_CLASS_TOKEN if self.num_prefix_tokens else QUERY_POOLED, QUERY_PATCH]
        self.query = widgets.ToggleButtons(options=query_options, description="query")
        whole = {"description_width": "initial"}  # show the whole description
        self.row = widgets.IntSlider(value=grid // 2, min=0, max=grid - 1, description="patch row", style=whole)
        self.col = widgets.IntSlider(value=grid // 2, min=0, max=grid - 1, description="patch column", style=whole)
        for widget, name in ((self.layer, "layer"), (self.row, "row"), (self.col, "col"), (self.upload, "upload")):
            widget.add_class(f"minivit-vit-{name}")  # stable handles for the browser test

        self.upload.observe(self._on_upload, names="value")
        for widget in (self.layer, self.head, self.query):
            widget.observe(self.redraw, names="value")
        for widget in (self.row, self.col):
            widget.observe(self._on_patch, names="value")
        self._lay_out(
            widgets.HBox([self.image_picker, self.upload]),
            widgets.HBox([self.layer, self.head]),
            self.query,
            widgets.HBox([self.row, self.col]),
        )
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
        self.set_image(self.images[change["new"]], self._image_name(change["new"]))

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
            matrix = self.head_mean[layer]  # (T, T)
        elif head == HEAD_ROLLOUT:
            matrix = self.rollout[layer]
        else:
            matrix = self.attention[layer, int(head.split()[-1])]
        if self.query.value != QUERY_PATCH:  # what the classifier reads
            return classifier_maps(matrix, self.grid_size, self.num_prefix_tokens)
        query = self.num_prefix_tokens + self.row.value * self.grid_size + self.col.value
        return query_maps(matrix, self.grid_size, query, self.num_prefix_tokens)

    def draw(self) -> tuple[np.ndarray, str]:
        attention_map = self.current_map()  # once, for the picture and the caption
        return self.render(attention_map), self.describe_current(attention_map)

    def render(self, attention_map: torch.Tensor | None = None) -> np.ndarray:
        """The picture: the image (query patch framed) beside the attention map over it: (S, 2S, 3) uint8."""
        left = self.enlarged  # (S, S, 3)
        if self.query.value == QUERY_PATCH:
            cell = self.display_size / self.grid_size
            row, col = self.row.value, self.col.value
            box = torch.tensor([[col * cell, row * cell, (col + 1) * cell, (row + 1) * cell]])  # (1, 4) xyxy
            left = draw_boxes(left, box, colors="cyan", width=3)
        right = blend_heatmap(self.enlarged, self.current_map() if attention_map is None else attention_map)
        return np.concatenate([left, right], axis=1)  # (S, 2S, 3)

    def describe_current(self, attention_map: torch.Tensor | None = None) -> str:
        attention_map = self.current_map() if attention_map is None else attention_map
        top = int(self.probabilities.argmax())
        predicted = self.class_names[top] if self.class_names else str(top)
        peak_row, peak_col = divmod(int(attention_map.argmax()), self.grid_size)
        patch = f"patch (row {self.row.value}, column {self.col.value})"
        query = patch if self.query.value == QUERY_PATCH else self.query.value
        return (
            f"{self.image_label}; predicted {predicted} ({self.probabilities[top]:.0%})\n"
            f"layer {self.layer.value}, {self.head.value}, query {query}: strongest on patch "
            f"(row {peak_row}, column {peak_col}), weight {attention_map.max():.3f}"
        )

    def overview(self) -> str:
        layers, heads, tokens, _ = self.attention.shape
        return (
            f"{len(self.images)} images to pick (or upload one), {layers} layers x {heads} heads, {tokens} tokens "
            f"({self.grid_size}x{self.grid_size} patches of {self.patch_size} px"
            f"{' + class token' if self.num_prefix_tokens else ''})."
        )

    def summary(self) -> str:
        return super().summary() + f"\nlast redraw took {self.last_redraw_seconds * 1000:.0f} ms"


def _identity(images: torch.Tensor) -> torch.Tensor:
    return images


class DETRAttentionExplorer(AttentionExplorer):
    """Explore what DETR's object queries look at: per query its box, class, score and
    decoder cross-attention map (mean over heads), or all queries above a threshold.

    ``images`` (N, 3, H, W) float in [0, 1] (or uint8) are shown; ``preprocess`` turns them
    into the model's input. One forward pass per image; a widget change only redraws.
    """

    title, css_name = "DETR attention explorer", "detr"

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
        num_classes = getattr(model, "num_classes", None)
        if num_classes is not None and len(class_names) < num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but the model predicts {num_classes} "
                             f"classes; pass one name per class (e.g. the dataset's class list)")
        if not 0.05 <= threshold <= 0.95:
            raise ValueError(f"threshold must be between 0.05 and 0.95 (the slider's range), got {threshold}")
        self.class_names, self.preprocess = list(class_names), preprocess
        super().__init__(model, to_float(images), display_size)
        last = len(model.transformer.decoder.layers) - 1  # the last decoder layer: the default
        self.threshold = widgets.FloatSlider(value=threshold, min=0.05, max=0.95, step=0.05, description="threshold")
        self.query = widgets.Dropdown(description="query", layout=widgets.Layout(width="360px"))
        whole = {"description_width": "initial"}  # show the whole description
        self.layer = widgets.IntSlider(value=last, min=0, max=last, description="decoder layer", style=whole)
        self.threshold.observe(self._on_threshold, names="value")
        for widget in (self.query, self.layer):
            widget.observe(self.redraw, names="value")
        self._lay_out(widgets.HBox([self.image_picker, self.threshold]), widgets.HBox([self.query, self.layer]))
        self.set_image(0)

    @torch.no_grad()
    def set_image(self, index: int) -> None:
        """Run DETR once on image ``index``; keep every query's prediction and cross-attention."""
        self.image = self.images[index]  # (3, H, W) in [0, 1]
        self.enlarged = enlarge(self.image, self.display_size)  # (S, S, 3), reused by every redraw
        with one_thread():
            outputs, attention = self.model.forward_with_attention(self.preprocess(self.image[None]))
        probabilities = outputs["pred_logits"][0].softmax(dim=-1)[:, :-1]  # (Q, classes): without "no object"
        self.scores, self.labels = probabilities.max(dim=-1)  # (Q,)
        height, width = self.image.shape[-2:]
        self.boxes = denormalize_boxes(box_cxcywh_to_xyxy(outputs["pred_boxes"][0]), (height, width))  # (Q, 4) pixels
        self.feature_size = attention["feature_size"]
        cross = attention["decoder_cross"][:, 0].mean(dim=1)  # (L, B, H, Q, h*w) -> (L, Q, h*w)
        self.cross_maps = cross.reshape(*cross.shape[:2], *self.feature_size)  # (L, Q, h, w)
        self._update_query_options()

    def _on_pick(self, change) -> None:
        self.set_image(change["new"])

    def _on_threshold(self, change) -> None:
        self._update_query_options()

    def _update_query_options(self) -> None:
        options = [(f"{ALL_ABOVE_THRESHOLD} ({len(self.kept_queries())})", ALL_ABOVE_THRESHOLD)]
        order = torch.argsort(self.scores, descending=True).tolist()
        options += [(f"query {q}: {self.class_names[self.labels[q]]} {self.scores[q]:.2f}", q) for q in order]
        current = self.query.value
        with self._one_redraw():  # setting the options fires value changes
            self.query.options = options
            self.query.value = current if current in [value for _, value in options] else ALL_ABOVE_THRESHOLD

    def kept_queries(self) -> list[int]:
        """The queries whose best class scores above the threshold."""
        return torch.nonzero(self.scores > self.threshold.value).flatten().tolist()

    def selected_queries(self) -> list[int]:
        return self.kept_queries() if self.query.value == ALL_ABOVE_THRESHOLD else [self.query.value]

    def render(self) -> np.ndarray:
        """The image with the selected boxes beside their (summed) cross-attention: (S, 2S, 3) uint8."""
        queries = self.selected_queries()
        scale = self.display_size / self.image.shape[-1]
        labels = [f"{self.class_names[self.labels[q]]} {self.scores[q]:.2f}" for q in queries]
        colors = [tab10_color(i) for i in range(len(queries))]
        left = draw_boxes(self.enlarged, self.boxes[queries] * scale, labels, colors=colors or "lime")
        maps = self.cross_maps[self.layer.value, queries]  # (K, h, w)
        if len(queries) == 0:
            right = self.enlarged // 3  # nothing above the threshold: a dimmed image
        else:
            normalized = maps / maps.flatten(1).amax(dim=1)[:, None, None]  # each map's peak at 1
            right = blend_heatmap(self.enlarged, normalized.sum(dim=0))  # (h, w) -> (S, S, 3)
        return np.concatenate([left, right], axis=1)  # (S, 2S, 3)

    def describe_current(self) -> str:
        lines = []
        for q in self.selected_queries():
            box = ", ".join(f"{v:.0f}" for v in self.boxes[q].tolist())
            name, score = self.class_names[self.labels[q]], self.scores[q]
            lines.append(f"query {q}: {name}, score {score:.2f}, box (x1, y1, x2, y2) = ({box}) px")
        return "\n".join(lines) if lines else f"no query scores above {self.threshold.value:.2f}"

    def overview(self) -> str:
        layers, queries = self.cross_maps.shape[:2]
        return (
            f"{len(self.images)} images, {queries} object queries, {layers} decoder layers, "
            f"feature map {self.feature_size[0]}x{self.feature_size[1]}; {len(self.kept_queries())} queries above "
            f"{self.threshold.value:.2f} on the current image:"
        )
