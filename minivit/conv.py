"""Chapter 1: convolution by hand (loops, then unfold), sizes, receptive fields, a small CNN.

Deep-learning "convolution" is cross-correlation: the kernel is not flipped.
Every function here agrees with ``F.conv1d`` / ``F.conv2d`` (see tests/test_conv.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minivit.configs import Config, positive


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution: ``floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``."""
    span = dilation * (kernel - 1) + 1
    if size + 2 * padding < span:
        raise ValueError(f"kernel span {span} is larger than the padded input {size + 2 * padding}")
    return (size + 2 * padding - span) // stride + 1


def conv1d_loops(signal: Sequence[float], kernel: Sequence[float], stride: int = 1, padding: int = 0) -> list[float]:
    """1D convolution of two plain sequences with Python loops: ``out[i] = sum_k x[i*stride + k] * w[k]``."""
    if len(kernel) == 0:
        raise ValueError("the kernel is empty")
    padded = [0.0] * padding + list(signal) + [0.0] * padding
    length = conv_output_size(len(signal), len(kernel), stride, padding)
    return [sum(padded[i * stride + k] * kernel[k] for k in range(len(kernel))) for i in range(length)]


def _check_conv2d_inputs(images: torch.Tensor, weight: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be (C_out, C_in, kH, kW), got shape {tuple(weight.shape)}")
    if images.shape[1] != weight.shape[1]:
        raise ValueError(
            f"images have {images.shape[1]} channels but the weight expects {weight.shape[1]}; "
            f"make weight.shape[1] equal the input channels"
        )


def conv2d_loops(images, weight, bias=None, stride=1, padding=0) -> torch.Tensor:
    """2D convolution with explicit loops over output positions (slow; for teaching)."""
    _check_conv2d_inputs(images, weight)
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    c_out, _, kh, kw = weight.shape
    padded = F.pad(images, (pw, pw, ph, ph))
    out_h = conv_output_size(images.shape[2], kh, sh, ph)
    out_w = conv_output_size(images.shape[3], kw, sw, pw)
    out = images.new_zeros(images.shape[0], c_out, out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]  # (B, C_in, kH, kW)
            out[:, :, i, j] = torch.einsum("bchw,ochw->bo", window, weight)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def conv2d_unfold(images, weight, bias=None, stride=1, padding=0) -> torch.Tensor:
    """2D convolution as one matrix product: unfold the windows into columns, multiply by the kernels."""
    _check_conv2d_inputs(images, weight)
    batch, _, height, width = images.shape
    c_out, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    columns = F.unfold(images, (kh, kw), padding=(ph, pw), stride=(sh, sw))  # (B, C_in*kH*kW, L)
    out = weight.view(c_out, -1) @ columns  # (B, C_out, L)
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    out_h, out_w = conv_output_size(height, kh, sh, ph), conv_output_size(width, kw, sw, pw)
    return out.view(batch, c_out, out_h, out_w)


def receptive_field(layers: Sequence[tuple[int, int]]) -> list[int]:
    """Receptive field after each layer of a stack given as ``(kernel, stride)`` pairs.

    ``r_l = r_{l-1} + (k_l - 1) * j_{l-1}`` where the jump ``j`` is the product of earlier strides.
    """
    field, jump, fields = 1, 1, []
    for kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
        fields.append(field)
    return fields


@dataclass(frozen=True)
class SmallCNNConfig(Config):
    """The architecture of :class:`SmallCNN`: ``width`` channels in the first stage, doubling twice."""

    num_classes: int = positive(10, "outputs of the classification head", sane_max=100_000)
    width: int = positive(32, "channels of the first stage (then 2x and 4x)", sane_max=4096)
    in_channels: int = positive(3, "channels of the input images", sane_max=64)


class SmallCNN(nn.Module):
    """A compact CIFAR CNN: three conv stages (conv-BN-ReLU x2, then max-pool) and a linear head.

    ``SmallCNN(config)`` or ``SmallCNN(width=44)``. ``width=32`` gives about 0.29 M parameters,
    close to the course's small ViT.
    """

    def __init__(self, config: SmallCNNConfig | None = None, **overrides):
        super().__init__()
        self.config = config = SmallCNNConfig.resolve(config, overrides)
        width, in_channels = config.width, config.in_channels
        widths = (width, 2 * width, 4 * width)

        def stage(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.in_channels = in_channels
        self.features = nn.Sequential(
            stage(in_channels, widths[0]), stage(widths[0], widths[1]), stage(widths[1], widths[2])
        )
        self.head = nn.Linear(widths[2], config.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(images.shape)}")
        features = self.features(images)  # (B, 4*width, H/8, W/8)
        return self.head(features.mean(dim=(2, 3)))  # global average pool -> (B, num_classes)


def train_briefly(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> list[float]:
    """A few AdamW steps on random batches with random left-right flips: enough for chapter 1's
    feature maps to mean something (chapter 4 trains properly). Returns the loss of each step.

    ``images`` (N, 3, H, W) uint8 and ``labels`` (N,) stay where they are; each batch is drawn
    with a CPU generator seeded by ``seed``, flipped, normalized with ``mean``/``std`` and moved
    to ``device`` (default :func:`minivit.devices.get_device`), where the model is moved too.
    """
    from tqdm.auto import tqdm

    from minivit.data.augment import normalize, random_flip
    from minivit.devices import get_device

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (at least one), got {len(images)} and {len(labels)}")
    device = get_device(device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc=f"training {type(model).__name__}", disable=not progress):
        batch = torch.randint(len(images), (batch_size,), generator=generator)  # (B,) on the CPU
        flipped = random_flip(images[batch], generator=generator)  # (B, 3, H, W) uint8
        inputs = normalize(flipped.to(device), mean, std)  # (B, 3, H, W) float on the device
        loss = F.cross_entropy(model(inputs), labels[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())  # no .item() per step: a GPU keeps running ahead
    return torch.stack(losses).cpu().tolist()
