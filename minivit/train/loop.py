"""Chapter 4's training loop: AdamW, warmup + cosine, label smoothing, mixed precision, an optional
moving average of the weights, checkpoints that resume exactly, and DistributedDataParallel.

    history = fit(model, train_set, test_set, TrainConfig(epochs=10, batch_size=256, lr=2e-3))

The data (an :class:`~minivit.data.ImageSet` of uint8 images) is moved to the device once and
augmented there in batches (:mod:`minivit.data.augment`). A NaN or infinite loss stops the run
(:class:`TrainingDiverged`) before it can write a checkpoint.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from minivit.data.augment import Augment, channel_stats, iterate_batches, normalize, num_batches, step_generator
from minivit.data.cifar10 import ImageSet
from minivit.data.mix import mix_batch
from minivit.devices import Precision, autocast, choose_precision, timed
from minivit.distill import check_student, freeze, hard_distillation_loss
from minivit.train.checkpoint import TEMP_SUFFIX, check_fits, read_checkpoint, save_checkpoint
from minivit.train.config import TrainConfig
from minivit.train.distributed import default_device, rank_and_world_size
from minivit.train.evaluate import evaluate
from minivit.train.history import History
from minivit.train.schedule import param_groups, resize_batch, train_sizes, warmup_cosine

DEFAULT_AUGMENT = Augment()
DIVERGENCE_HINT = "lower --lr, keep --grad-clip, or use --amp off (TrainConfig fields lr, grad_clip, amp)"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; ``epoch`` and ``step`` count from 1."""

    def __init__(self, message: str, epoch: int, step: int, lr: float, loss: float):
        super().__init__(message)
        self.epoch, self.step, self.lr, self.loss = epoch, step, lr, loss


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` in {"auto", "bf16", "fp16", "off"} on ``device`` (None: fp32).

    "auto": bf16 on GPUs with bf16 units, fp16 (with a GradScaler) on older GPUs such as a T4,
    fp32 on the CPU; see :func:`minivit.devices.choose_precision`.
    """
    return choose_precision(device, amp).dtype


@dataclass
class _Run:
    """What one call of :func:`fit` works with."""

    config: TrainConfig
    model: nn.Module  # the bare model; train_model may wrap it in DDP and torch.compile
    device: torch.device
    precision: Precision
    images: torch.Tensor  # (N, C, H, W) uint8, on the device
    labels: torch.Tensor  # (N,)
    mean: torch.Tensor  # (C,) normalization statistics of the training images
    std: torch.Tensor
    sizes: list[int]  # the training image size of each epoch
    steps_per_epoch: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    rank: int = 0
    world_size: int = 1
    train_model: nn.Module | None = None
    history: History = field(default_factory=History)
    start_epoch: int = 0
    teacher: nn.Module | None = None  # DeiT distillation: a frozen classifier, on the device

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


def fit(model: nn.Module, train_set: ImageSet, test_set: ImageSet, config: TrainConfig, *,
        augment: Augment | None = DEFAULT_AUGMENT, checkpoint_dir: str | Path | None = None, resume: bool = True,
        device: torch.device | str | None = None, stop_after: int | None = None, progress: bool = True,
        teacher: nn.Module | None = None) -> History:
    """Train ``model`` on ``train_set`` as ``config`` says, testing on ``test_set``; returns the :class:`History`.

    ``augment`` is applied to each training batch (None: no augmentation). With ``checkpoint_dir``
    the state is saved after every epoch to ``checkpoint_dir/last.pt`` and, with ``resume``, a run
    picks up where the last one stopped (bit for bit). ``stop_after`` ends this call after that many
    epochs (as if interrupted). ``device`` defaults to :func:`minivit.devices.get_device` (each
    process's own GPU under torchrun). A NaN or infinite loss raises :class:`TrainingDiverged`;
    the checkpoint of the last finished epoch stays as it was.

    ``teacher`` (a trained classifier, frozen here) turns on DeiT's hard distillation: ``model`` must
    have a distillation token (``ViTConfig(distill_token=True)``); see :mod:`minivit.distill`.
    ``config.mixup_alpha`` / ``cutmix_alpha`` > 0 mix each batch (:mod:`minivit.data.mix`).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}: "
                        f"fit(model, train_set, test_set, TrainConfig(epochs=..., lr=...))")
    if len(train_set) < config.batch_size:
        raise ValueError(f"the training set has {len(train_set)} images, fewer than one batch of {config.batch_size}")
    if teacher is not None:
        check_student(model)
    run = _start(model, train_set, config, device, progress)
    if teacher is not None:
        run.teacher = freeze(teacher.to(run.device))
    recipe = _recipe(config, augment, len(train_set))
    checkpoint_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if checkpoint_path is not None and run.rank == 0:
        remove_stray_temp_files(checkpoint_path.parent)
    if checkpoint_path is not None and resume and checkpoint_path.is_file():
        _resume(run, checkpoint_path, recipe, progress)
    run.train_model = _wrap_for_training(run)
    last_epoch = config.epochs if stop_after is None else min(config.epochs, run.start_epoch + stop_after)
    for epoch in range(run.start_epoch, last_epoch):
        _run_epoch(run, epoch, test_set, augment, progress, checkpoint_path)
        if checkpoint_path is not None and run.rank == 0:
            _save(run, epoch + 1, checkpoint_path, train_set, recipe)
        if run.world_size > 1:
            dist.barrier()
    return run.history


STRAY_TEMP_PATTERNS = (f"*.pt{TEMP_SUFFIX}", f"*.json{TEMP_SUFFIX}")  # left behind by an interrupted write


def remove_stray_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files of interrupted checkpoint/history writes in ``folder``, saying so; returns them."""
    if not folder.is_dir():
        return []
    stray = sorted({path for pattern in STRAY_TEMP_PATTERNS for path in folder.glob(pattern) if path.is_file()})
    for path in stray:
        path.unlink(missing_ok=True)
    if stray:
        print(f"removed {len(stray)} temp file(s) of an interrupted write in {folder}: "
              f"{', '.join(p.name for p in stray)}", flush=True)
    return stray


def _start(model: nn.Module, train_set: ImageSet, config: TrainConfig, device, progress: bool) -> _Run:
    """Device, precision, data on the device, optimizer, schedule, scaler and EMA."""
    rank, world_size = rank_and_world_size()
    device = torch.device(device) if device is not None else default_device(rank)
    precision = choose_precision(device, config.amp, config.compile)
    if rank == 0 and progress:
        print(f"training on {device}: {precision}", flush=True)
    images, labels = train_set.images.to(device), train_set.labels.to(device)  # uint8, moved once
    mean, std = channel_stats(images)
    steps_per_epoch = num_batches(len(train_set), config.batch_size, drop_last=True)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(round(config.warmup * steps_per_epoch), total_steps - 1)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999),
                                  fused=device.type == "cuda")
    scheduler = warmup_cosine(optimizer, total_steps, warmup_steps, config.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.grad_scaler)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
           if config.ema_decay else None)
    return _Run(config, model, device, precision, images, labels, mean, std,
                train_sizes(config.progressive, config.epochs, train_set.images.shape[-1]), steps_per_epoch,
                optimizer, scheduler, scaler, ema, rank, world_size)


def _recipe(config: TrainConfig, augment: Augment | None, train_size: int) -> dict:
    """What a checkpoint's run must share with this one to be resumed by it."""
    return {"train_config": config.resume_fields(), "augment": asdict(augment) if augment is not None else None,
            "train_size": train_size}


def _wrap_for_training(run: _Run) -> nn.Module:
    train_model = run.model
    if run.world_size > 1:
        device_ids = [run.device] if run.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=device_ids)
    if run.precision.compile:
        train_model = torch.compile(train_model)
    return train_model


# --------------------------------------------------------------------------- one epoch
def _run_epoch(run: _Run, epoch: int, test_set: ImageSet, augment: Augment | None, progress: bool,
               checkpoint_path: Path | None) -> None:
    """Train one epoch, test if due, record it in the history and print one line."""
    config = run.config
    with timed(run.device) as clock:
        totals = _train_epoch(run, epoch, augment, progress, checkpoint_path)  # loss sum, correct, count
        if (config.eval_every and (epoch + 1) % config.eval_every == 0) or epoch + 1 == config.epochs:
            test_loss, test_acc = evaluate(run.eval_model, test_set, run.mean, run.std, config.eval_batch_size,
                                           config.tta_flip, run.precision.dtype, run.device, config.tta_shift)
        else:
            test_loss = test_acc = float("nan")
    history = run.history
    history.append(train_loss=totals[0].item() / totals[2].item(), train_acc=totals[1].item() / totals[2].item(),
                   test_loss=test_loss, test_acc=test_acc, lr=run.optimizer.param_groups[0]["lr"],
                   seconds=clock.seconds)
    if run.rank == 0 and progress:
        print(f"epoch {epoch + 1:3d}/{config.epochs}  {run.sizes[epoch]}px  train loss {history.train_loss[-1]:.3f} "
              f"acc {history.train_acc[-1]:6.1%}  test loss {test_loss:.3f} acc {test_acc:6.1%}  "
              f"({history.seconds[-1]:.0f} s)", flush=True)


def _train_epoch(run: _Run, epoch: int, augment: Augment | None, progress: bool,
                 checkpoint_path: Path | None) -> torch.Tensor:
    """One pass over the training set; returns (loss sum, correct, count), summed over the processes."""
    config = run.config
    run.train_model.train()
    totals = torch.zeros(3, device=run.device)  # loss sum, correct, count
    batches = iterate_batches(run.images, run.labels, config.batch_size, shuffle=True, seed=config.seed, epoch=epoch,
                              drop_last=True, augment=augment, rank=run.rank, world_size=run.world_size)
    bar = tqdm(batches, total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               disable=not progress or run.rank != 0, dynamic_ncols=True)
    watch = _DivergenceWatch(run, epoch, checkpoint_path)
    for step, (images, labels) in enumerate(bar):
        lr = run.optimizer.param_groups[0]["lr"]
        mix = (step_generator(config.seed, epoch, run.steps_per_epoch + step)  # not a generator augment uses
               if config.mixup_alpha or config.cutmix_alpha else None)
        loss, logits = _train_step(run, images, labels, run.sizes[epoch], mix)
        watch.record(loss, lr)
        totals += torch.stack([loss.detach() * len(labels), (logits.argmax(1) == labels).sum(),
                               torch.tensor(len(labels), device=run.device)])
        if step % 10 == 0 or step == run.steps_per_epoch - 1:
            watch.check()  # waits for the device, as the progress bar's numbers do
            bar.set_postfix(loss=f"{totals[0].item() / totals[2].item():.3f}",
                            acc=f"{totals[1].item() / totals[2].item():.1%}",
                            lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    if run.world_size > 1:
        dist.all_reduce(totals)
    return totals


def _train_step(run: _Run, images: torch.Tensor, labels: torch.Tensor, size: int,
                mix: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a uint8 batch (B, C, H, W); returns the loss and the logits (B, classes).

    ``mix``: the generator of this step's mixup/CutMix (None: no mixing).
    """
    config = run.config
    inputs = resize_batch(normalize(images, run.mean, run.std), size)  # (B, C, size, size) float
    targets = labels  # (B,) class indices, or (B, classes) probabilities once mixed
    if mix is not None:
        num_classes = run.model.config.num_classes if hasattr(run.model, "config") else int(run.labels.max()) + 1
        inputs, targets = mix_batch(inputs, labels, num_classes, config.mixup_alpha, config.cutmix_alpha, mix)
    with autocast(run.device, run.precision.dtype):
        if run.teacher is not None:
            cls_logits, dist_logits = run.train_model(inputs, both_heads=True)
            with torch.no_grad():
                teacher_logits = run.teacher(inputs)
            loss = hard_distillation_loss(cls_logits.float(), dist_logits.float(), targets, teacher_logits.float(),
                                          config.label_smoothing)
            logits = (cls_logits + dist_logits) / 2
        else:
            logits = run.train_model(inputs)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if config.grad_clip:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    return loss, logits


class _DivergenceWatch:
    """Keeps the losses since the last check on the device (no wait per step) and raises
    :class:`TrainingDiverged` at a check if one of them is not finite, naming the first."""

    def __init__(self, run: _Run, epoch: int, checkpoint_path: Path | None):
        self.run, self.epoch, self.checkpoint_path = run, epoch, checkpoint_path
        self.losses: list[torch.Tensor] = []
        self.lrs: list[float] = []
        self.steps_before = 0  # steps of this epoch checked already

    def record(self, loss: torch.Tensor, lr: float) -> None:
        self.losses.append(loss.detach())
        self.lrs.append(lr)

    def check(self) -> None:
        finite = torch.isfinite(torch.stack(self.losses))  # (steps since the last check,)
        first_bad = len(self.losses) if bool(finite.all()) else int((~finite).nonzero()[0, 0])
        if self.run.world_size > 1:  # every process stops at the same step
            shared = torch.tensor([first_bad], device=self.run.device)
            dist.all_reduce(shared, op=dist.ReduceOp.MIN)
            first_bad = int(shared.item())
        if first_bad < len(self.losses):
            self._stop(first_bad)
        self.steps_before += len(self.losses)
        self.losses.clear()
        self.lrs.clear()

    def _stop(self, index: int) -> None:
        run, epoch, step = self.run, self.epoch + 1, self.steps_before + index + 1
        loss, lr = float(self.losses[index]), self.lrs[index]
        path = self.checkpoint_path
        if path is not None and path.is_file():
            kept = f"{path} keeps the weights after epoch {self.epoch} (nothing was written after the divergence)"
        else:
            kept = "no checkpoint was written after the divergence"
        raise TrainingDiverged(f"training diverged: the loss is {loss} at epoch {epoch}/{run.config.epochs}, step "
                               f"{step}/{run.steps_per_epoch}, learning rate {lr:.3g}; {kept}. "
                               f"Hint: {DIVERGENCE_HINT}", epoch, step, lr, loss)


# --------------------------------------------------------------------------- checkpoints
def _save(run: _Run, epochs_done: int, path: Path, train_set: ImageSet, recipe: dict) -> None:
    ema, device = run.ema, run.device
    training = {
        "model": run.model.state_dict() if ema is not None else None,  # the optimizer's weights, beside their EMA
        "ema_n_averaged": int(ema.n_averaged) if ema is not None else 0,
        "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
    }
    meta = {"epoch": epochs_done, "history": run.history.to_dict(), "train_config": run.config.to_dict(),
            "augment": recipe["augment"], "train_size": recipe["train_size"],
            "normalization": {"mean": run.mean.tolist(), "std": run.std.tolist()},
            "classes": list(train_set.classes),
            "data": train_set.source}  # which CIFAR-10 copy: an accuracy is only meaningful with it
    weights = ema.module.state_dict() if ema is not None else run.model.state_dict()
    save_checkpoint(path, run.model, weights=weights, meta=meta, training=training)


def _recipe_changes(meta: dict, recipe: dict) -> dict[str, tuple]:
    """``{name: (stored, now)}`` for each value of ``recipe`` that the checkpoint's ``meta`` records differently."""
    stored_config = {**_LATER_FIELDS, **meta.get("train_config", {})}  # older checkpoints lack the later fields
    changed = {key: (stored_config.get(key), value) for key, value in recipe["train_config"].items()
               if stored_config.get(key) != value}
    changed.update({key: (meta.get(key), recipe[key]) for key in ("augment", "train_size")
                    if meta.get(key) != recipe[key]})
    return changed


_LATER_FIELDS = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}  # TrainConfig fields added after checkpoints were written


def _resume(run: _Run, path: Path, recipe: dict, progress: bool) -> None:
    """Load the state of ``path`` into the run: weights, optimizer, schedule, scaler, EMA, RNG, history."""
    checkpoint = read_checkpoint(path, map_location=run.device)
    check_fits(checkpoint, run.model, path)
    meta, training = checkpoint["meta"], checkpoint["training"]
    if training is None:
        raise ValueError(f"{path} holds no training state (an exported checkpoint?); use another checkpoint_dir "
                         f"or resume=False")
    changed = _recipe_changes(meta, recipe)
    if changed:
        raise ValueError(f"{path} was written by another recipe (stored vs now: {changed}); "
                         f"use another checkpoint_dir or resume=False")
    run.model.load_state_dict(training["model"] if training.get("model") is not None else checkpoint["model"])
    run.optimizer.load_state_dict(training["optimizer"])
    run.scheduler.load_state_dict(training["scheduler"])
    run.scaler.load_state_dict(training["scaler"])
    if run.ema is not None:
        run.ema.module.load_state_dict(checkpoint["model"])
        run.ema.n_averaged.fill_(training["ema_n_averaged"])
    torch.set_rng_state(training["rng"]["torch"].cpu())
    if run.device.type == "cuda" and training["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(training["rng"]["cuda"].cpu(), run.device)
    run.history, run.start_epoch = History.from_dict(meta["history"]), meta["epoch"]
    if run.rank == 0 and progress:
        print(f"resumed from {path.name} after epoch {run.start_epoch}/{run.config.epochs}")
