"""The checkpoint formats before ``minivit/2``, read with a ``DeprecationWarning`` and upgraded in memory.

* ``minivit.train/1`` (written by ``fit`` and ``export_checkpoint`` until the config dataclasses):
  a flat dict with ``model_class`` ("ViT", "SmallCNN"), ``model_config``, ``model``, ``ema``,
  ``recipe`` and the training state beside the meta values;
* the tiny-DETR file of ``save_tiny_detr`` (no format key): ``config`` (``build_tiny_detr``'s keyword
  arguments, whose defaults were then those of :data:`TINY_DETR_DEFAULTS_BEFORE_V2`), ``classes``,
  ``image_size``, ``metrics``, ``model``.

Every recorded value is kept; the old ``recipe`` becomes ``meta["train_config"]`` (the fields of
``TrainConfig``) plus ``meta["augment"]`` and ``meta["train_size"]``, as ``fit`` records them now.
:func:`minivit.train.upgrade_checkpoint` rewrites such a file in the current format.
"""
from __future__ import annotations

import warnings

from minivit.train.config import TrainConfig

TRAIN_FORMAT_V1 = "minivit.train/1"
ARCHITECTURE_OF_CLASS_V1 = {"ViT": "vit", "SmallCNN": "small_cnn"}
TRAINING_KEYS_V1 = ("optimizer", "scheduler", "scaler", "rng", "ema_n_averaged")
TINY_DETR_KEYS_V1 = {"config", "classes", "image_size", "metrics", "model"}
TINY_DETR_DEFAULTS_BEFORE_V2 = dict(num_queries=16, hidden_dim=128, num_heads=4, num_encoder_layers=2,
                                    num_decoder_layers=2, dim_feedforward=256, dropout=0.0,
                                    backbone_widths=(32, 64, 128, 128), aux_loss=True, position_embedding="sine")
SMALL_CNN_DEFAULTS_V1 = dict(in_channels=3)


def upgrade_legacy_checkpoint(raw: dict, path) -> dict:
    """``raw`` (a file's content in an older format) in the current layout (without its ``format``);
    warns that the format is old."""
    if raw.get("format") == TRAIN_FORMAT_V1:
        upgraded, old = _upgrade_train_v1(raw), TRAIN_FORMAT_V1
    elif "format" not in raw and TINY_DETR_KEYS_V1 <= set(raw):
        upgraded, old = _upgrade_tiny_detr_v1(raw), "the tiny-DETR file of save_tiny_detr"
    else:
        raise ValueError(f"{path} is not a minivit checkpoint (format {raw.get('format')!r}, keys "
                         f"{sorted(map(str, raw))[:8]}); write checkpoints with minivit.train.fit(..., "
                         f"checkpoint_dir=...) or minivit.train.save_checkpoint")
    warnings.warn(f"{path} is in an old checkpoint format ({old}); it loads, but rewrite it with "
                  f"minivit.train.upgrade_checkpoint(path, new_path)", DeprecationWarning, stacklevel=3)
    return upgraded


def _upgrade_train_v1(raw: dict) -> dict:
    ema = raw.get("ema")
    training = None
    if "optimizer" in raw:
        training = {key: raw[key] for key in TRAINING_KEYS_V1 if key in raw}
        training["model"] = raw["model"] if ema is not None else None
    recipe = dict(raw.get("recipe") or {})
    train_fields = set(TrainConfig().keys())
    meta = {key: value for key, value in raw.items()
            if key not in {"format", "model_class", "model_config", "model", "ema", "recipe", *TRAINING_KEYS_V1}}
    if recipe:
        meta["train_config"] = {key: value for key, value in recipe.items() if key in train_fields}
        meta.update({key: value for key, value in recipe.items() if key not in train_fields})  # augment, train_size
    architecture, config = ARCHITECTURE_OF_CLASS_V1.get(raw.get("model_class")), raw.get("model_config")
    if architecture == "small_cnn" and config is not None:
        config = {**SMALL_CNN_DEFAULTS_V1, **config}
    return {"architecture": architecture, "config": config, "model": ema if ema is not None else raw["model"],
            "meta": meta, "training": training}


def _upgrade_tiny_detr_v1(raw: dict) -> dict:
    config = {"num_classes": None, **TINY_DETR_DEFAULTS_BEFORE_V2, **raw["config"], "backbone": "small_conv"}
    config["backbone_widths"] = list(config["backbone_widths"])
    meta = {key: value for key, value in raw.items() if key not in ("config", "model")}
    return {"architecture": "detr", "config": config, "model": raw["model"], "meta": meta, "training": None}

