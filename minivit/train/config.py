"""The settings of a training run, as two validated dataclasses.

* :class:`TrainConfig`: everything :func:`minivit.train.fit` needs besides the model, the data
  and the augmentation: optimizer, schedule, regularization, precision, test-time augmentation.
* :class:`DataConfig`: what the command line adds: how many CIFAR-10 images, which augmentation.

Each field carries its help text and its valid range, so a bad value stops here with a message
that names the field and the range, and ``python -m minivit.train`` makes one flag per field
(name, type, help and range from the field itself: flags and defaults cannot drift apart).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields

from minivit.configs import FLAG, Choice, Config, Range, setting
from minivit.data.augment import Augment
from minivit.devices import AMP_CHOICES
from minivit.train.schedule import check_progressive


@dataclass(frozen=True)
class ProgressiveSchedule:
    """A progressive-resizing schedule ``((size, fraction of the epochs), ...)`` or None."""

    def describe(self) -> str:
        return "None or (image size, fraction of the epochs) pairs whose fractions add up to 1"

    def __call__(self, value):
        phases = check_progressive(value)
        return None if phases is None else tuple((size, fraction) for size, fraction in phases)


def parse_progressive(text: str):
    """``--progressive``: JSON ``[[size, fraction], ...]`` or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg} at character {error.pos + 1} of {text!r}); give pairs "
                         f"[[size, fraction], ...] in quotes, e.g. --progressive '[[16, 0.5], [32, 0.5]]', "
                         f"or none") from None


def parse_compile(text: str):
    """``--compile auto|on|off``."""
    value = {"auto": "auto", "on": True, "true": True, "off": False, "false": False}.get(text.strip().lower())
    if value is None:
        raise ValueError(f"expected auto, on or off, got {text!r}")
    return value


@dataclass(frozen=True)
class TrainConfig(Config):
    """How :func:`~minivit.train.fit` trains. ``must_match_on_resume=False`` marks the fields a
    resumed run may change (they do not change the weights' path or what the history records)."""

    epochs: int = setting(10, "epochs to train", Range(1, integer=True))
    batch_size: int = setting(128, "images per optimizer step (all processes together under DDP)",
                              Range(1, integer=True))
    lr: float = setting(1e-3, "peak learning rate of AdamW, reached at the end of warmup", Range(0, low_open=True))
    weight_decay: float = setting(0.05, "AdamW weight decay of the Linear/Conv weights", Range(0))
    warmup: float = setting(1.0, "epochs of linear learning-rate warmup (may be fractional)", Range(0))
    label_smoothing: float = setting(0.1, "label smoothing of the cross-entropy", Range(0, 1, high_open=True))
    grad_clip: float | None = setting(1.0, "clip the gradient norm to this (0 or none: no clipping)",
                                      Range(0, optional=True))
    min_lr_ratio: float = setting(0.01, "the cosine ends at this fraction of lr", Range(0, 1))
    ema_decay: float | None = setting(None, "keep an exponential moving average of the weights and test it "
                                            "(none: off)", Range(0, 1, low_open=True, high_open=True, optional=True))
    tta_flip: bool = setting(False, "test-time augmentation: also average the mirrored images", FLAG)
    tta_shift: int = setting(0, "test-time augmentation: also average 4 views shifted by this many pixels "
                                "(0: off)", Range(0, integer=True))
    seed: int = setting(0, "seed of the batch order and augmentation (and, on the command line, of "
                           "everything)", Range(0, integer=True))
    eval_batch_size: int = setting(500, "images per forward pass when testing", Range(1, integer=True),
                                   must_match_on_resume=False)
    amp: str = setting("auto", "mixed precision: auto (from the hardware), bf16, fp16 or off", Choice(AMP_CHOICES),
                       must_match_on_resume=False)
    compile: bool | str = setting(False, "torch.compile the model: auto (where it works), on or off",
                                  Choice(("auto", True, False)), must_match_on_resume=False, parse=parse_compile,
                                  metavar="auto|on|off")
    progressive: tuple | None = setting(None, "progressive resizing, JSON [[size, fraction of the epochs], ...], "
                                              "e.g. [[16, 0.4], [32, 0.6]]; none: full size throughout",
                                        ProgressiveSchedule(), parse=parse_progressive, metavar="JSON|none")
    eval_every: int = setting(1, "test every N epochs and after the last (0: only after the last)",
                              Range(0, integer=True), must_match_on_resume=False)
    mixup_alpha: float = setting(0.0, "mixup: blend image pairs with lambda ~ Beta(a, a) and soft labels (0: off)",
                                 Range(0))
    cutmix_alpha: float = setting(0.0, "CutMix: paste a box of another image, lambda ~ Beta(a, a) (0: off; with "
                                       "mixup too, one of the two per batch)", Range(0))

    def resume_fields(self) -> dict:
        """The fields a checkpoint's run must share for this run to resume it."""
        values = self.to_dict()
        return {item.name: values[item.name] for item in fields(self)
                if item.metadata.get("must_match_on_resume", True)}


@dataclass(frozen=True)
class DataConfig(Config):
    """Which data ``python -m minivit.train`` loads and how it augments them."""

    train_limit: int | None = setting(None, "use the first N training images (none: all 50,000)",
                                      Range(1, integer=True, optional=True))
    test_limit: int | None = setting(None, "use the first N test images (none: all 10,000)",
                                     Range(1, integer=True, optional=True))
    crop_padding: int = setting(4, "random crops of the images padded by this many pixels", Range(0, integer=True))
    trivial_augment: bool = setting(False, "add TrivialAugmentWide (stronger augmentation, for long runs)", FLAG)

    def augment(self) -> Augment:
        return Augment(crop_padding=self.crop_padding, trivial_augment=self.trivial_augment)
