"""minivit: the helper package of the minivit course (transformers in computer vision).

``minivit.setup()`` (each notebook's first call) picks the run profile and the device;
``minivit.devices`` makes every device and precision decision; ``minivit.models`` names every
model of the course (config dataclasses, ``build_model``). Each chapter adds a module:

1. ``minivit.conv``: convolution by hand, a small CNN
2. ``minivit.attention``, ``minivit.transformer``: attention and the encoder block
3. ``minivit.vit``: the Vision Transformer
4. ``minivit.data``, ``minivit.train``: CIFAR-10 and the training loop
5. ``minivit.boxes``, ``minivit.detr``: DETR
6. ``minivit.matching``: Hungarian matching and the set loss
7. ``minivit.viz``: attention maps
9. ``minivit.transfer``, ``minivit.reattention``, ``minivit.clip``: fine-tuning, DeepViT's re-attention, a mini CLIP

Across chapters 3, 5 and 7: ``minivit.photos`` (a real photo offline, ImageNet preprocessing,
class names) and ``minivit.downloads`` (pretrained weights, or ``None`` and one line offline).
"""
from minivit.devices import choose_precision, get_device, to_device
from minivit.runtime import PROFILES, by_profile, data_dir, describe, get_profile, seed_everything, set_profile, setup

__version__ = "0.1.0"
__all__ = [
    "PROFILES",
    "by_profile",
    "data_dir",
    "describe",
    "get_device",
    "get_profile",
    "choose_precision",
    "seed_everything",
    "set_profile",
    "setup",
    "to_device",
]
