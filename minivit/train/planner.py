"""How many epochs fit into a time budget, measured on this machine before the run."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from minivit.bench import time_steps  # times with a device synchronize around the steps
from minivit.data.augment import Augment, channel_stats, normalize
from minivit.data.cifar10 import ImageSet
from minivit.devices import autocast
from minivit.train.config import TrainConfig
from minivit.train.distributed import default_device
from minivit.train.evaluate import predict
from minivit.train.loop import resolve_amp
from minivit.train.schedule import check_progressive, resize_batch

TEST_PROBE_IMAGES = 500
SPARE = 1.05  # plan for 5 % more time than measured


def plan_epochs(model: nn.Module, train_set: ImageSet, test_set: ImageSet, budget_seconds: float,
                config: TrainConfig, *, augment: Augment | None = None, device: torch.device | str | None = None,
                steps: int = 10) -> tuple[int, float]:
    """How many epochs of ``config`` fit into ``budget_seconds``; returns ``(epochs, estimated seconds per epoch)``.

    Times ``steps`` training steps of a copy of the model (``config.batch_size`` images each) at each
    size of ``config.progressive``, in 3 interleaved passes (the median per size), and a test of 500
    images with the config's test-time augmentation; extrapolates to an epoch (training plus its share
    of testing, see ``eval_every``) and keeps 5 % spare. The model itself is left untouched.
    """
    device = torch.device(device) if device is not None else default_device(0)
    amp_dtype = resolve_amp(config.amp, device)
    probe = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-4)
    images = train_set.images[:config.batch_size].to(device)  # (B, C, H, W) uint8
    labels = train_set.labels[:config.batch_size].to(device)
    mean, std = channel_stats(images)

    def train_step(size: int) -> None:
        batch = augment(images, generator=torch.Generator().manual_seed(0)) if augment is not None else images
        with autocast(device, amp_dtype):
            loss = F.cross_entropy(probe(resize_batch(normalize(batch, mean, std), size)).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    phases = check_progressive(config.progressive) or [[images.shape[-1], 1.0]]
    step_seconds: dict[int, list[float]] = {size: [] for size, _ in phases}
    for _ in range(3):  # 3 interleaved passes: each size timed at 3 moments, the median ignores 1 slow one
        for size, _ in phases:
            train_step(size)  # warm-up (allocations, kernel choice)
            step_seconds[size] += [time_steps(lambda: train_step(size), 1, device) for _ in range(steps)]
    train_per_image = sum(fraction * sorted(step_seconds[size])[steps * 3 // 2] / config.batch_size
                          for size, fraction in phases)  # the median: robust to hiccups
    test_per_image = time_steps(lambda: predict(probe, test_set.images[:TEST_PROBE_IMAGES], mean, std,
                                                tta_flip=config.tta_flip, amp_dtype=amp_dtype, device=device,
                                                tta_shift=config.tta_shift),
                                1, device) / min(TEST_PROBE_IMAGES, len(test_set))
    test_seconds = SPARE * len(test_set) * test_per_image
    epoch_seconds = SPARE * len(train_set) * train_per_image + (
        test_seconds / config.eval_every if config.eval_every else 0.0)
    budget_seconds -= 0.0 if config.eval_every else test_seconds  # eval_every=0: one test, after the last epoch
    return max(1, int(budget_seconds // epoch_seconds)), epoch_seconds
