"""Chapter 7: what attention looks at, as numbers and pictures.

Shapes: L layers, H heads, T tokens (prefix tokens such as the class token first, then the
N = gh * gw patches row by row), B images, Q object queries of DETR.

The package in four layers, each using only those above it:

* :mod:`minivit.viz.maps`: the maths on attention tensors (capture, rollout, attention distance,
  position-embedding similarity, patch components, cross-layer similarity, DETR's maps);
* :mod:`minivit.viz.render`: maps as (H, W, 3) uint8 pictures (enlarge, heatmap, boxes, PNG);
  :mod:`minivit.viz.figures`: the chapter's matplotlib figures (``plot_*``);
* :mod:`minivit.viz.widgets`: uploads, HTML captions and display under ipywidgets 7.7 and 8;
* :mod:`minivit.viz.explorers`: :class:`ViTAttentionExplorer` and :class:`DETRAttentionExplorer`
  on their shared base :class:`~minivit.viz.explorers.AttentionExplorer`.

Every public name is here too (``from minivit import viz; viz.capture_attention``). Importing
the package loads neither matplotlib nor ipywidgets: they are imported when a picture is
coloured or an explorer is built.
"""
from minivit.viz.explorers import (
    ALL_ABOVE_THRESHOLD,
    HEAD_MEAN,
    HEAD_ROLLOUT,
    QUERY_CLASS_TOKEN,
    QUERY_PATCH,
    QUERY_POOLED,
    DETRAttentionExplorer,
    ViTAttentionExplorer,
    one_thread,
)
from minivit.viz.figures import (
    plot_cross_layer_similarity,
    plot_detr_encoder_attention,
    plot_detr_queries,
    plot_map_grid,
    plot_mean_attention_distance,
    plot_patch_components,
    plot_position_similarity,
)
from minivit.viz.maps import (
    attention_rollout,
    attention_rollout_per_layer,
    capture_attention,
    classifier_maps,
    cross_layer_similarity,
    detr_cross_attention_maps,
    detr_encoder_attention_at,
    mask_patches,
    mean_attention_distance,
    num_prefix_tokens,
    patch_distance_matrix,
    patch_embedding_components,
    position_embedding_similarity,
    query_maps,
    to_unit_range,
    upsample_maps,
)
from minivit.viz.render import blend_heatmap, draw_boxes, enlarge, overlay_heatmap, png_bytes
from minivit.viz.widgets import (
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    WIDGET_VIEW_MIMETYPE,
    clear_upload,
    html_text,
    image_from_bytes,
    uploaded_files,
)

__all__ = [
    # maps
    "attention_rollout",
    "attention_rollout_per_layer",
    "capture_attention",
    "classifier_maps",
    "cross_layer_similarity",
    "detr_cross_attention_maps",
    "detr_encoder_attention_at",
    "mask_patches",
    "mean_attention_distance",
    "num_prefix_tokens",
    "patch_distance_matrix",
    "patch_embedding_components",
    "position_embedding_similarity",
    "query_maps",
    "to_unit_range",
    "upsample_maps",
    # render
    "blend_heatmap",
    "draw_boxes",
    "enlarge",
    "overlay_heatmap",
    "png_bytes",
    # figures
    "plot_cross_layer_similarity",
    "plot_detr_encoder_attention",
    "plot_detr_queries",
    "plot_map_grid",
    "plot_mean_attention_distance",
    "plot_patch_components",
    "plot_position_similarity",
    # widgets
    "MAX_UPLOAD_BYTES",
    "MAX_UPLOAD_PIXELS",
    "WIDGET_VIEW_MIMETYPE",
    "clear_upload",
    "html_text",
    "image_from_bytes",
    "uploaded_files",
    # explorers
    "ALL_ABOVE_THRESHOLD",
    "HEAD_MEAN",
    "HEAD_ROLLOUT",
    "QUERY_CLASS_TOKEN",
    "QUERY_PATCH",
    "QUERY_POOLED",
    "DETRAttentionExplorer",
    "ViTAttentionExplorer",
    "one_thread",
]
