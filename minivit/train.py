"""Chapter 4: the training loop: AdamW, warmup + cosine, label smoothing, mixed precision,
checkpoints that resume exactly, and DistributedDataParallel under ``torchrun``.

    history = fit(model, train_set, test_set, epochs=10, batch_size=256, lr=2e-3)

The data (an :class:`~minivit.data.ImageSet` of uint8 images) is moved to the device once
and augmented there in batches (:mod:`minivit.data.augment`). The same recipe runs from the
command line::

    python -m minivit.train --config vit_cifar_small --profile cpu --out runs/cpu
    torchrun --nproc_per_node=2 -m minivit.train --config vit_cifar_small --profile cpu --out runs/ddp
"""
from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import os
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from minivit.devices import autocast, choose_precision, get_device
from minivit.data.augment import Augment, channel_stats, iterate_batches, normalize, num_batches, random_crop
from minivit.data.cifar10 import ImageSet

CHECKPOINT_FORMAT = "minivit.train/1"
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "vit_cifar_small.pt"


# --------------------------------------------------------------------------- history
@dataclass
class History:
    """Per-epoch record of a run: losses, accuracies (0..1), learning rate, wall-clock seconds."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds))

    def append(self, **values: float) -> None:
        for name, value in values.items():
            getattr(self, name).append(float(value))

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "History":
        return cls(**{name: [float(v) for v in values.get(name, [])] for name in cls.__dataclass_fields__})

    def __str__(self) -> str:
        if not self.epochs:
            return "History(no epochs)"
        return (f"History({self.epochs} epochs, {self.total_seconds:.0f} s: train loss {self.train_loss[-1]:.3f} "
                f"acc {self.train_acc[-1]:.1%}, test loss {self.test_loss[-1]:.3f} acc {self.test_acc[-1]:.1%})")

    def plot(self, axes=None, label: str = ""):
        """Loss and accuracy curves on two matplotlib axes (created if not given)."""
        import matplotlib.pyplot as plt

        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        epochs = range(1, self.epochs + 1)
        prefix = f"{label} " if label else ""
        # epochs that eval_every skipped hold NaN: plot the tested ones
        tested = [i for i, value in enumerate(self.test_acc) if not math.isnan(value)]
        axes[0].plot(epochs, self.train_loss, "--", label=f"{prefix}train")
        axes[0].plot([i + 1 for i in tested], [self.test_loss[i] for i in tested], "o-", ms=3, label=f"{prefix}test")
        axes[1].plot(epochs, [100 * a for a in self.train_acc], "--", label=f"{prefix}train")
        axes[1].plot([i + 1 for i in tested], [100 * self.test_acc[i] for i in tested], "o-", ms=3,
                     label=f"{prefix}test")
        axes[0].set(title="Loss per epoch", xlabel="epoch", ylabel="cross-entropy (nats)")
        axes[1].set(title="Accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend()
        return axes


# --------------------------------------------------------------------------- optimizer and schedule
NO_DECAY_NAMES = ("cls_token", "pos_embed", "class_token", "pos_embedding", "dist_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weights of Linear/Conv layers decay; norms, biases, embeddings and tokens do not."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        skip = param.ndim < 2 or leaf in NO_DECAY_NAMES or id(param) in embedding_params
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup from ``lr / warmup_steps`` to ``lr``, then cosine decay to ``min_lr_ratio * lr``.

    Step it once per optimizer step. Built from ``LinearLR`` + ``CosineAnnealingLR``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in 0..{total_steps - 1} (total_steps), got {warmup_steps}")
    base_lr = optimizer.param_groups[0]["lr"]
    cosine = CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=min_lr_ratio * base_lr)
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


# --------------------------------------------------------------------------- devices and precision
def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` in {"auto", "bf16", "fp16", "off"} on ``device`` (None: fp32).

    "auto": bf16 on GPUs with bf16 units, fp16 (with a GradScaler) on older GPUs such as a T4,
    fp32 on the CPU; see :func:`minivit.devices.choose_precision`.
    """
    return choose_precision(device, amp).dtype


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
            batch_size: int = 500, tta_flip: bool = False, amp_dtype: torch.dtype | None = None,
            device: torch.device | str | None = None, tta_shift: int = 0) -> torch.Tensor:
    """Logits (N, classes) of uint8 images (N, C, H, W), in eval mode.

    Test-time augmentation averages the logits of several views: ``tta_flip`` adds the mirror
    image, ``tta_shift`` > 0 adds four copies shifted diagonally by that many pixels (zero
    padding, as the training crops); both together give 10 views.
    """
    if tta_shift < 0:
        raise ValueError(f"tta_shift must be >= 0 pixels, got {tta_shift}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shifts = [(0, 0)] + ([(dy, dx) for dy in (-tta_shift, tta_shift) for dx in (-tta_shift, tta_shift)]
                         if tta_shift else [])
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].to(device)  # (b, C, H, W) uint8
        total = 0.0
        for dy, dx in shifts:
            offsets = torch.tensor([[tta_shift + dy, tta_shift + dx]], device=device).expand(len(chunk), 2)
            batch = normalize(random_crop(chunk, tta_shift, offsets=offsets), mean, std)  # the view, shifted
            with autocast(device, amp_dtype):
                total = total + model(batch).float()
                if tta_flip:
                    total = total + model(batch.flip(-1)).float()
        outputs.append(total / (len(shifts) * (2 if tta_flip else 1)))  # (b, classes)
    model.train(was_training)
    return torch.cat(outputs)


def evaluate(model: nn.Module, data: ImageSet, mean: torch.Tensor, std: torch.Tensor, batch_size: int = 500,
             tta_flip: bool = False, amp_dtype: torch.dtype | None = None,
             device: torch.device | str | None = None, tta_shift: int = 0) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on ``data``; under DDP each rank scores its shard."""
    rank, world_size = _distributed()
    shard = slice(rank * len(data) // world_size, (rank + 1) * len(data) // world_size)
    logits = predict(model, data.images[shard], mean, std, batch_size, tta_flip, amp_dtype, device, tta_shift)
    labels = data.labels[shard].to(logits.device)
    totals = torch.stack([F.cross_entropy(logits, labels, reduction="sum"),
                          (logits.argmax(1) == labels).sum().float()])
    if world_size > 1:
        dist.all_reduce(totals)
    return (totals[0] / len(data)).item(), (totals[1] / len(data)).item()


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
    index = labels.long().cpu() * num_classes + predictions.long().cpu()
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def misclassified(predictions: torch.Tensor, labels: torch.Tensor, confidences: torch.Tensor | None = None,
                  count: int = 16) -> torch.Tensor:
    """Indices of up to ``count`` wrong predictions, the most confident mistakes first when given confidences."""
    wrong = torch.nonzero(predictions.cpu() != labels.cpu()).flatten()
    if confidences is not None:
        wrong = wrong[confidences.cpu()[wrong].argsort(descending=True)]
    return wrong[:count]


# --------------------------------------------------------------------------- checkpoints
def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: a killed run leaves the previous checkpoint intact


def _read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a minivit training checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
                         f"write checkpoints with minivit.train.fit(..., checkpoint_dir=...)")
    return checkpoint


def _model_description(model: nn.Module) -> tuple[str, dict | None]:
    model = _unwrap(model)
    config = getattr(model, "config", None)
    return type(model).__name__, dict(config) if isinstance(config, dict) else None


def _check_same_architecture(checkpoint: dict, model: nn.Module, path) -> None:
    name, config = _model_description(model)
    if checkpoint["model_class"] != name or (config is not None and checkpoint["model_config"] != config):
        raise ValueError(
            f"checkpoint {path} holds a {checkpoint['model_class']} with config {checkpoint['model_config']}, "
            f"but the model is a {name} with config {config}; build the model from the checkpoint "
            f"(minivit.train.load_checkpoint(path)) or use another checkpoint folder")
    target = _unwrap(model).state_dict()
    weights = checkpoint["model"]
    bad = sorted(set(target) ^ set(weights)) + [
        f"{k} {tuple(weights[k].shape)} vs {tuple(target[k].shape)}"
        for k in target if k in weights and weights[k].shape != target[k].shape]
    if bad:
        raise ValueError(f"checkpoint {path} does not fit the model: mismatched keys {bad[:8]}")


def build_model(name: str, **overrides) -> nn.Module:
    """A model by name: ``small_cnn`` (chapter 1's CNN, ``width=...``) or a ViT config of ``minivit.vit.CONFIGS``."""
    if name in ("small_cnn", "SmallCNN"):
        from minivit.conv import SmallCNN

        config = {"num_classes": 10, "width": 32, **overrides}
        model = SmallCNN(**config)
        model.config = config  # so that checkpoints can rebuild it
        return model
    from minivit.vit import build_vit

    return build_vit(name, **overrides)


def load_checkpoint(path: str | Path, model: nn.Module | None = None,
                    map_location="cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`fit` (or exported): ``(model, info)``.

    Without ``model`` the model is rebuilt from the stored class and config. The weights
    are the evaluated ones (the EMA when the run kept one). ``info`` holds the history,
    recipe, normalization ``mean``/``std``, ``classes`` and, if recorded, ``command`` and
    ``test_acc``. A checkpoint of another architecture raises ``ValueError``.
    """
    checkpoint = _read_checkpoint(path, map_location)
    if model is None:
        if checkpoint["model_config"] is None:
            raise ValueError(f"checkpoint {path} stores no model config; pass the model: load_checkpoint(path, model)")
        if checkpoint["model_class"] == "ViT":
            from minivit.vit import ViT

            model = ViT(**checkpoint["model_config"])
        elif checkpoint["model_class"] == "SmallCNN":
            model = build_model("small_cnn", **checkpoint["model_config"])
        else:
            raise ValueError(f"checkpoint {path} holds a {checkpoint['model_class']}, which minivit cannot rebuild; "
                             f"pass the model: load_checkpoint(path, model)")
    _check_same_architecture(checkpoint, model, path)
    weights = checkpoint["ema"] if checkpoint.get("ema") is not None else checkpoint["model"]
    _unwrap(model).load_state_dict(weights)
    info = {key: checkpoint[key] for key in checkpoint if key not in ("model", "ema", "optimizer", "scheduler",
                                                                      "scaler", "rng", "ema_n_averaged")}
    info["history"] = History.from_dict(checkpoint["history"])
    info["mean"] = torch.tensor(checkpoint["normalization"]["mean"])
    info["std"] = torch.tensor(checkpoint["normalization"]["std"])
    return model.eval(), info


def export_checkpoint(source: str | Path, target: str | Path, **extra) -> Path:
    """Write a small inference checkpoint (evaluated weights, config, statistics, history, ``extra``)."""
    checkpoint = _read_checkpoint(source)
    weights = checkpoint["ema"] if checkpoint.get("ema") is not None else checkpoint["model"]
    slim = {key: value for key, value in checkpoint.items()
            if key not in ("optimizer", "scheduler", "scaler", "rng", "ema", "ema_n_averaged")}
    slim.update(model=weights, ema=None, **extra)
    _atomic_save(slim, Path(target))
    return Path(target)


def load_pretrained_cifar_vit(map_location="cpu") -> tuple[nn.Module, dict]:
    """The small CIFAR-10 ViT shipped with minivit (trained by chapter 4's ``cpu`` recipe): ``(model, info)``."""
    if not SHIPPED_CHECKPOINT.is_file():
        raise FileNotFoundError(f"the shipped checkpoint {SHIPPED_CHECKPOINT.name} is missing from the package; "
                                f"reinstall minivit or train one with `python -m minivit.train`")
    return load_checkpoint(SHIPPED_CHECKPOINT, map_location=map_location)


# --------------------------------------------------------------------------- progressive resizing
def check_progressive(progressive) -> list[list] | None:
    """Validate a progressive-resizing schedule ``[(size, fraction of the epochs), ...]``; returns lists."""
    if not progressive:
        return None
    try:
        phases = [[int(size), float(fraction)] for size, fraction in progressive]
    except (TypeError, ValueError):
        raise ValueError(f"progressive must be a list of (image size, fraction of the epochs) pairs, "
                         f"e.g. [(16, 0.4), (24, 0.3), (32, 0.3)]; got {progressive!r}") from None
    if any(size < 1 or fraction <= 0 for size, fraction in phases):
        raise ValueError(f"progressive sizes and fractions must be positive, got {phases}")
    if abs(sum(fraction for _, fraction in phases) - 1) > 1e-6:
        raise ValueError(f"progressive fractions must add up to 1, got {phases} "
                         f"(sum {sum(f for _, f in phases):g})")
    return phases


def train_sizes(progressive, epochs: int, full_size: int) -> list[int]:
    """The training image size of each epoch: ``full_size`` throughout, or the phases of ``progressive``.

    Epoch ``e`` belongs to the phase that holds the middle of the epoch, ``(e + 0.5) / epochs``;
    every phase with at least half an epoch gets its epochs.
    """
    phases = check_progressive(progressive)
    if phases is None:
        return [full_size] * epochs
    ends = list(itertools.accumulate(fraction for _, fraction in phases))  # where each phase ends, in (0, 1]
    last = len(phases) - 1  # rounding may leave the last end a hair below 1
    return [phases[min(bisect.bisect_right(ends, (epoch + 0.5) / epochs), last)][0] for epoch in range(epochs)]


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float images (B, C, H, W) -> (B, C, size, size), bilinear with antialiasing (a no-op at H = W = size)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# --------------------------------------------------------------------------- the loop
def fit(
    model: nn.Module,
    train_set: ImageSet,
    test_set: ImageSet,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup: float = 1.0,
    label_smoothing: float = 0.1,
    grad_clip: float | None = 1.0,
    augment: Augment | None = Augment(),
    min_lr_ratio: float = 0.01,
    ema_decay: float | None = None,
    tta_flip: bool = False,
    tta_shift: int = 0,
    seed: int = 0,
    eval_batch_size: int = 500,
    amp: str = "auto",
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    compile: bool | str = False,
    device: torch.device | str | None = None,
    stop_after: int | None = None,
    progress: bool = True,
    progressive: list | None = None,
    eval_every: int = 1,
) -> History:
    """Train ``model`` on ``train_set`` for ``epochs`` epochs, testing after each; returns the :class:`History`.

    ``batch_size`` is the global batch (split across processes under DDP), ``warmup`` is
    in epochs (may be fractional). With ``checkpoint_dir`` the state is saved after every
    epoch to ``checkpoint_dir/last.pt`` and, with ``resume``, a run picks up where the last
    one stopped. ``stop_after`` ends this call after that many epochs (as if interrupted).
    ``progressive`` trains on downscaled images first, e.g. ``[(16, 0.4), (24, 0.3), (32, 0.3)]``
    (image size, fraction of the epochs; the model must accept several sizes, like a ViT with
    ``dynamic_size=True``); ``eval_every`` tests every that many epochs and after the last, 0 only
    after the last (the other epochs record NaN as test loss and accuracy).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1 or lr <= 0:
        raise ValueError(f"batch_size must be >= 1 and lr > 0, got batch_size={batch_size}, lr={lr}")
    if len(train_set) < batch_size:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {batch_size}")
    if ema_decay is not None and not 0 < ema_decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0 (0: test only after the last epoch), got {eval_every}")
    progressive = check_progressive(progressive)
    rank, world_size = _distributed()
    device = torch.device(device) if device is not None else _default_device(rank)
    precision = choose_precision(device, amp, compile)
    amp_dtype = precision.dtype
    if rank == 0 and progress:
        print(f"training on {device}: {precision}", flush=True)
    recipe = dict(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                  label_smoothing=label_smoothing, grad_clip=grad_clip, min_lr_ratio=min_lr_ratio,
                  ema_decay=ema_decay, tta_flip=tta_flip, tta_shift=tta_shift, seed=seed,
                  augment=asdict(augment) if augment is not None else None, train_size=len(train_set),
                  progressive=progressive)

    # data: uint8 tensors, moved once; statistics from the training set
    train_images, train_labels = train_set.images.to(device), train_set.labels.to(device)
    mean, std = channel_stats(train_images)
    steps_per_epoch = num_batches(len(train_set), batch_size, drop_last=True)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(round(warmup * steps_per_epoch), total_steps - 1)
    sizes = train_sizes(progressive, epochs, train_set.images.shape[-1])

    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999),
                                  fused=device.type == "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SequentialLR's "epoch parameter" deprecation note
        scheduler = warmup_cosine(optimizer, total_steps, warmup_steps, min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaler)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True) if ema_decay else None
    history, start_epoch = History(), 0

    checkpoint_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if checkpoint_path is not None and resume and checkpoint_path.is_file():
        checkpoint = _read_checkpoint(checkpoint_path, map_location=device)
        _check_same_architecture(checkpoint, model, checkpoint_path)
        if checkpoint["recipe"] != recipe:
            changed = {k: (checkpoint["recipe"].get(k), v) for k, v in recipe.items() if checkpoint["recipe"].get(k) != v}
            raise ValueError(f"{checkpoint_path} was written by another recipe (stored vs now: {changed}); "
                             f"use another checkpoint_dir or resume=False")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        if ema is not None:
            ema.module.load_state_dict(checkpoint["ema"])
            ema.n_averaged.fill_(checkpoint["ema_n_averaged"])
        torch.set_rng_state(checkpoint["rng"]["torch"].cpu())
        if device.type == "cuda" and checkpoint["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"].cpu(), device)
        history, start_epoch = History.from_dict(checkpoint["history"]), checkpoint["epoch"]
        if rank == 0 and progress:
            print(f"resumed from {checkpoint_path.name} after epoch {start_epoch}/{epochs}")

    train_model: nn.Module = model
    if world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if precision.compile:
        train_model = torch.compile(train_model)
    eval_model = ema.module if ema is not None else model

    last_epoch = epochs if stop_after is None else min(epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        started = time.perf_counter()
        train_model.train()
        totals = torch.zeros(3, device=device)  # loss sum, correct, count
        batches = iterate_batches(train_images, train_labels, batch_size, shuffle=True, seed=seed, epoch=epoch,
                                  drop_last=True, augment=augment, rank=rank, world_size=world_size)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or rank != 0, dynamic_ncols=True)
        for step, (images, labels) in enumerate(bar):
            inputs = resize_batch(normalize(images, mean, std), sizes[epoch])  # (B, C, size, size) float
            with autocast(device, amp_dtype):
                logits = train_model(inputs)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            totals += torch.stack([loss.detach() * len(labels), (logits.argmax(1) == labels).sum(),
                                   torch.tensor(len(labels), device=device)])
            if step % 10 == 0 or step == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{totals[0].item() / totals[2].item():.3f}",
                                acc=f"{totals[1].item() / totals[2].item():.1%}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        bar.close()
        if world_size > 1:
            dist.all_reduce(totals)
        if (eval_every and (epoch + 1) % eval_every == 0) or epoch + 1 == epochs:
            test_loss, test_acc = evaluate(eval_model, test_set, mean, std, eval_batch_size, tta_flip, amp_dtype,
                                           device, tta_shift)
        else:
            test_loss = test_acc = float("nan")
        history.append(train_loss=totals[0].item() / totals[2].item(), train_acc=totals[1].item() / totals[2].item(),
                       test_loss=test_loss, test_acc=test_acc, lr=optimizer.param_groups[0]["lr"],
                       seconds=time.perf_counter() - started)
        if rank == 0 and progress:
            print(f"epoch {epoch + 1:3d}/{epochs}  {sizes[epoch]}px  train loss {history.train_loss[-1]:.3f} acc "
                  f"{history.train_acc[-1]:6.1%}  test loss {test_loss:.3f} acc {test_acc:6.1%}  "
                  f"({history.seconds[-1]:.0f} s)", flush=True)
        if checkpoint_path is not None and rank == 0:
            name, config = _model_description(model)
            _atomic_save({
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "model_class": name, "model_config": config,
                "model": model.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "history": history.to_dict(), "recipe": recipe,
                "normalization": {"mean": mean.tolist(), "std": std.tolist()},
                "classes": list(train_set.classes),
                "data": train_set.source,  # which CIFAR-10 copy: an accuracy is only meaningful with it
            }, checkpoint_path)
        if world_size > 1:
            dist.barrier()
    return history


def _default_device(rank: int) -> torch.device:
    """:func:`minivit.devices.get_device`; under torchrun, each process's own GPU."""
    device = get_device()
    if device.type == "cuda" and device.index is None and _distributed()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    return device


# --------------------------------------------------------------------------- recipes and command line
# One recipe per profile. Measured on the 2-core CPU of the course machine; see README.
RECIPES: dict[str, dict] = {
    "smoke": dict(train_limit=1000, test_limit=500, epochs=2, batch_size=100, lr=1e-3, weight_decay=0.05,
                  warmup=0.5, label_smoothing=0.1, grad_clip=1.0, crop_padding=4, trivial_augment=False,
                  ema_decay=None, tta_flip=False, tta_shift=0, amp="auto", compile=False, progressive=None, eval_every=1,
                  model={}),
    # cpu: the 0.55 M-parameter vit_cifar_small, as many epochs as fit into --time-budget (default 27 min);
    # progressive resizing: 16 px (17 tokens) and 24 px (37 tokens) epochs cost about 1/4 and 1/2 of a
    # 32 px epoch (65 tokens), so the budget holds ~20-26 epochs instead of 12; tested once, at the end, with
    # 10 views per image (flips x 5 positions: +2.5 points over flips alone on the same weights).
    # Measured on a 2-core CPU: 76.36 % in 28.0 min (26 epochs; the shipped checkpoint), 75.84 % in 28.2 min
    # when repeated on a slower machine (23 epochs)
    "cpu": dict(train_limit=None, test_limit=None, epochs=25, batch_size=128, lr=2e-3, weight_decay=0.05,
                warmup=1.0, label_smoothing=0.1, grad_clip=1.0, crop_padding=4, trivial_augment=False,
                ema_decay=None, tta_flip=True, tta_shift=1, amp="auto", compile=False,
                progressive=[[16, 0.5], [24, 0.3], [32, 0.2]], eval_every=0, model={}),
    # gpu: data and augmentation on the GPU, mixed precision from the hardware (bf16 on an A100/H100, fp16 +
    # GradScaler on a T4), torch.compile where it works, the 3.7 M-parameter vit_cifar_lite
    "gpu": dict(train_limit=None, test_limit=None, epochs=200, batch_size=512, lr=2e-3, weight_decay=0.05,
                warmup=3.0, label_smoothing=0.1, grad_clip=1.0, crop_padding=4, trivial_augment=True,
                ema_decay=0.999, tta_flip=True, tta_shift=0, amp="auto", compile="auto", progressive=None, eval_every=1,
                model={}),
}
DEFAULT_CONFIG = {"smoke": "vit_cifar_small", "cpu": "vit_cifar_small", "gpu": "vit_cifar_lite"}
DEFAULT_BUDGET_MINUTES = {"smoke": None, "cpu": 27.0, "gpu": None}


def plan_epochs(model: nn.Module, train_set: ImageSet, test_set: ImageSet, budget_seconds: float,
                batch_size: int, augment: Augment | None, tta_flip: bool = False, amp: str = "off",
                device: torch.device | str | None = None, steps: int = 10, progressive: list | None = None,
                eval_every: int = 1, tta_shift: int = 0) -> tuple[int, float]:
    """How many epochs fit into ``budget_seconds``: times ``steps`` training steps of a copy of the model
    at each size of a ``progressive`` schedule, in 3 interleaved passes (the median per size), and 500
    test images, extrapolates to an epoch (training + its share of testing), keeps 5 % spare.
    Returns ``(epochs, estimated seconds per epoch)``."""
    import copy

    from minivit.bench import time_steps  # times with a CUDA synchronize around the steps

    device = torch.device(device) if device is not None else _default_device(0)
    amp_dtype = resolve_amp(amp, device)
    probe = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    images, labels = train_set.images[:batch_size].to(device), train_set.labels[:batch_size].to(device)
    mean, std = channel_stats(images)

    def train_step(size: int):
        batch = augment(images, generator=torch.Generator().manual_seed(0)) if augment is not None else images
        with autocast(device, amp_dtype):
            loss = F.cross_entropy(probe(resize_batch(normalize(batch, mean, std), size)).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    phases = check_progressive(progressive) or [[images.shape[-1], 1.0]]
    step_seconds: dict[int, list[float]] = {size: [] for size, _ in phases}
    for _ in range(3):  # 3 interleaved passes: each size timed at 3 moments, the median ignores 1 slow one
        for size, _ in phases:
            train_step(size)  # warm-up (allocations, kernel choice)
            step_seconds[size] += [time_steps(lambda: train_step(size), 1, device) for _ in range(steps)]
    train_per_image = 0.0
    for size, fraction in phases:
        times = sorted(step_seconds[size])
        train_per_image += fraction * times[len(times) // 2] / batch_size  # median: robust to hiccups
    test_per_image = time_steps(lambda: predict(probe, test_set.images[:500], mean, std, tta_flip=tta_flip,
                                                amp_dtype=amp_dtype, device=device, tta_shift=tta_shift),
                                1, device) / min(500, len(test_set))
    test_seconds = 1.05 * len(test_set) * test_per_image
    epoch_seconds = 1.05 * len(train_set) * train_per_image + (test_seconds / eval_every if eval_every else 0.0)
    budget_seconds -= 0.0 if eval_every else test_seconds  # eval_every=0: one test, after the last epoch
    return max(1, int(budget_seconds // epoch_seconds)), epoch_seconds


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minivit.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=None,
                        help="a ViT config of minivit.vit.CONFIGS, or small_cnn (default: the profile's)")
    parser.add_argument("--profile", default=None, choices=("smoke", "cpu", "gpu"),
                        help="recipe to use (default: $MINIVIT_PROFILE, else gpu with CUDA, else cpu)")
    parser.add_argument("--out", required=True, help="output folder: checkpoints, history.json, final.pt")
    for name, kind in [("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float),
                       ("warmup", float), ("label-smoothing", float), ("grad-clip", float), ("ema-decay", float),
                       ("train-limit", int), ("test-limit", int), ("crop-padding", int)]:
        parser.add_argument(f"--{name}", type=kind, default=None, help="override the profile's value")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default=None)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--trivial-augment", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--model", default="{}", help='JSON of model overrides, e.g. \'{"dim": 128, "depth": 4}\'')
    parser.add_argument("--progressive", default=None,
                        help='JSON progressive-resizing schedule [[size, fraction of epochs], ...], '
                             'e.g. \'[[16, 0.4], [32, 0.6]]\'; "none" trains at full size throughout')
    parser.add_argument("--eval-every", type=int, default=None,
                        help="test every N epochs and after the last (0: only after the last)")
    parser.add_argument("--tta-shift", type=int, default=None,
                        help="test-time augmentation: also average 4 views shifted by this many pixels (0 = off)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="minutes for the whole run: the epochs are planned from a measured step time "
                             "(cpu default 27, leaving 3 minutes for the machine to slow down; 0 = use --epochs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    parser.add_argument("--export", default=None, help="also write a small inference checkpoint to this path")
    return parser.parse_args(argv)


def main(argv=None) -> History:
    from minivit.data import load_cifar10
    from minivit.runtime import get_profile, seed_everything

    args = _parse_args(argv)
    command = "python -m minivit.train " + shlex.join(sys.argv[1:] if argv is None else argv)  # copy-pastable
    profile = args.profile or get_profile()
    recipe = dict(RECIPES[profile])
    for key in recipe:
        value = getattr(args, key, None) if key not in ("model", "progressive") else None
        if value is not None:
            recipe[key] = value
    if args.progressive is not None:
        recipe["progressive"] = None if args.progressive.lower() == "none" else json.loads(args.progressive)
    model_overrides = {**recipe.pop("model"), **json.loads(args.model)}

    started = time.perf_counter()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "gloo":  # share the cores between the processes of this machine
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    rank = dist.get_rank() if dist.is_initialized() else 0
    seed_everything(args.seed)
    config = args.config or DEFAULT_CONFIG[profile]
    train_set = load_cifar10("train", limit=recipe.pop("train_limit"))
    test_set = load_cifar10("test", limit=recipe.pop("test_limit"))
    model = build_model(config, **model_overrides)
    augment = Augment(crop_padding=recipe.pop("crop_padding"), trivial_augment=recipe.pop("trivial_augment"))
    budget = args.time_budget if args.time_budget is not None else DEFAULT_BUDGET_MINUTES[profile]
    out = Path(args.out)
    resuming = (out / "last.pt").is_file() and not args.no_resume
    if resuming and args.epochs is None:  # keep the plan of the interrupted run
        recipe["epochs"] = _read_checkpoint(out / "last.pt")["recipe"]["epochs"]
    elif budget and args.epochs is None:
        spent = time.perf_counter() - started
        # 30 s reserve: the planner's own measuring (~23 s on the 2-core CPU: 3 passes and a 10-view test)
        planned, epoch_seconds = plan_epochs(model, train_set, test_set, 60 * budget - spent - 30,
                                             recipe["batch_size"] // world_size, augment, recipe["tta_flip"],
                                             recipe["amp"], progressive=recipe["progressive"],
                                             eval_every=recipe["eval_every"], tta_shift=recipe["tta_shift"])
        if world_size > 1:  # every rank must run the same number of epochs: take rank 0's plan
            plan = torch.tensor([planned], dtype=torch.float64)
            dist.broadcast(plan, 0)
            planned = int(plan.item())
        recipe["epochs"] = planned
        recipe["warmup"] = min(recipe["warmup"], planned / 5)  # a short run must not be all warmup
        if rank == 0:
            print(f"time budget {budget:g} min: measured ~{epoch_seconds:.0f} s per epoch -> {planned} epochs",
                  flush=True)
    if rank == 0:
        print(f"data: {train_set.source}", flush=True)
        params = sum(p.numel() for p in model.parameters())
        print(f"{config} {model_overrides or ''} ({params / 1e6:.2f} M parameters), profile {profile}, "
              f"{world_size} process(es), recipe {recipe}", flush=True)
    history = fit(model, train_set, test_set, augment=augment, checkpoint_dir=out, resume=not args.no_resume,
                  seed=args.seed, **recipe)
    wall = time.perf_counter() - started
    if rank == 0:
        summary = {"command": command, "profile": profile, "processes": world_size, "wall_seconds": wall,
                   "test_acc": history.test_acc[-1], "data": test_set.source, "hardware": _hardware(),
                   "history": history.to_dict()}
        (out / "history.json").write_text(json.dumps(summary, indent=1))
        print(f"done: test accuracy {history.test_acc[-1]:.2%} on {test_set.source}, {wall / 60:.1f} min "
              f"wall-clock (with data loading) on {_hardware()}")
        if args.export:
            export_checkpoint(out / "last.pt", args.export, command=command, test_acc=history.test_acc[-1],
                              wall_seconds=wall, hardware=_hardware())
            print(f"exported {args.export}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return history


def _hardware() -> str:
    if get_device().type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
