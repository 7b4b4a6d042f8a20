"""Chapter 6: training the tiny DETR on the synthetic shapes, and scoring it with mAP.

* :func:`train_detr`: AdamW, gradient clipping, a learning-rate drop, the set criterion with
  auxiliary losses, a tqdm progress bar and optional snapshots during training;
* :func:`predict` / :func:`detect`: outputs and thresholded detections for a stack of images,
  optionally with non-maximum suppression (``nms_iou``);
* :func:`duplicate_mask` / :func:`duplicate_rate`: which / how many confident detections repeat a
  better one (what NMS removes);
* :func:`evaluate_detections` / :func:`evaluate_decoder_layers`: mAP@0.5, mAP@0.75 and the duplicate
  rate of the last decoder layer, or of every decoder layer's (auxiliary) output, with or without NMS;
* :func:`average_precision`, :func:`mean_average_precision`: VOC/COCO-style all-point
  interpolated AP per class at one IoU threshold, averaged over the classes that have objects;
* :func:`save_tiny_detr` / :func:`load_tiny_detr`: the checkpoint the course ships
  (``minivit/checkpoints/tiny_detr_shapes.pt``), used offline by chapters 5 and 7; minivit's one
  checkpoint format (:mod:`minivit.train.checkpoint`) with the classes, image size and metrics.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

from minivit.boxes import box_cxcywh_to_xyxy, box_iou, check_boxes
from minivit.checks import check_finite_images
from minivit.data.augment import to_float
from minivit.detr import DETR, DETRConfig, postprocess
from minivit.devices import Stopwatch, get_device, module_device, to_device
from minivit.matching import SetCriterion
from minivit.models import MODEL_CONFIGS
from minivit.train.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

TINY_DETR_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "tiny_detr_shapes.pt"

# The chapter-6 recipe's model: the registry's entry (a DETRConfig, which also reads like a dict:
# build_tiny_detr(**TINY_DETR_CONFIG) and TINY_DETR_CONFIG["num_queries"] work).
TINY_DETR_CONFIG = MODEL_CONFIGS["tiny_detr"]

# ----------------------------------------------------------------------------- mean average precision


def average_precision(scores, is_true_positive, num_objects: int) -> float:
    """All-point interpolated AP of one class: the area under the precision-recall curve
    after replacing each precision by the best precision at any higher recall.

    scores (D,), is_true_positive (D,) bool for the D detections of the class over all
    images; ``num_objects`` ground-truth objects of the class. No objects -> NaN.
    """
    if num_objects == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(is_true_positive, dtype=np.float64)[order]
    true_positives, false_positives = np.cumsum(hits), np.cumsum(1 - hits)
    recall = true_positives / num_objects
    precision = true_positives / np.maximum(true_positives + false_positives, 1e-12)
    # Sentinels, then the precision envelope (monotone non-increasing from the right).
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[1.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])  # where recall increases
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def _check_detections(items, kind: str, keys) -> None:
    for index, item in enumerate(items):
        missing = [k for k in keys if k not in item]
        if missing:
            raise ValueError(f"{kind}[{index}] lacks {missing}; expected a dict with {list(keys)}")
        if len(item["labels"]) != len(item["boxes"]) or (
            "scores" in keys and len(item["scores"]) != len(item["labels"])
        ):
            raise ValueError(f"{kind}[{index}] has different numbers of labels, boxes and scores")
        check_boxes(item["boxes"].reshape(-1, 4), "xyxy", f"{kind}[{index}]['boxes']")
        if "scores" in keys and not bool(torch.isfinite(item["scores"]).all()):
            first = int(torch.nonzero(~torch.isfinite(item["scores"])).flatten()[0])
            raise ValueError(f"{kind}[{index}]['scores'][{first}] is {float(item['scores'][first])}: scores must be "
                             f"finite (a NaN score cannot be ranked, and would make the AP meaningless); check the "
                             f"model's outputs for NaN")


def average_precision_per_class(predictions: list[dict], targets: list[dict],
                                iou_threshold: float = 0.5) -> dict[int, float]:
    """AP for every class that occurs in ``targets`` (see :func:`mean_average_precision`)."""
    if len(predictions) != len(targets):
        raise ValueError(f"got predictions for {len(predictions)} images but targets for {len(targets)}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    _check_detections(predictions, "predictions", ("boxes", "scores", "labels"))
    _check_detections(targets, "targets", ("boxes", "labels"))
    classes = sorted(set(torch.cat([t["labels"].reshape(-1) for t in targets]).tolist())) if targets else []
    results = {}
    for cls in classes:
        scores, hits, num_objects = [], [], 0
        for prediction, target in zip(predictions, targets):
            gt_boxes = target["boxes"].reshape(-1, 4)[target["labels"] == cls]
            num_objects += len(gt_boxes)
            keep = prediction["labels"] == cls
            boxes, image_scores = prediction["boxes"].reshape(-1, 4)[keep], prediction["scores"][keep]
            order = torch.argsort(image_scores, descending=True, stable=True)
            boxes, image_scores = boxes[order], image_scores[order]
            taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
            iou = box_iou(boxes.double(), gt_boxes.double())[0] if len(gt_boxes) else None  # (D, G)
            for d in range(len(boxes)):  # highest score first; each object can be found once
                hit = False
                if iou is not None:
                    best = int(iou[d].argmax())
                    if iou[d, best] >= iou_threshold and not taken[best]:
                        taken[best], hit = True, True
                scores.append(float(image_scores[d]))
                hits.append(hit)
        results[cls] = average_precision(scores, hits, num_objects)
    return results


def mean_average_precision(predictions: list[dict], targets: list[dict], iou_threshold: float = 0.5) -> float:
    """mAP at one IoU threshold (e.g. mAP@0.5), as in PASCAL VOC 2010+ / COCO's per-threshold AP.

    predictions: per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,)}``;
    targets: per image ``{"boxes": (G, 4) xyxy, "labels": (G,)}``, in the same units as the
    predictions. Per class: detections sorted by score; a detection is a true positive when
    its highest-IoU object of that class has IoU >= ``iou_threshold`` and was not already
    found by a higher-scored detection (a duplicate is a false positive); AP = all-point
    interpolated area under the precision-recall curve. The mean is over the classes that
    occur in ``targets`` (a class that is never detected counts 0).
    """
    per_class = average_precision_per_class(predictions, targets, iou_threshold)
    if not per_class:
        raise ValueError("the targets contain no objects: mAP is undefined")
    return float(np.mean(list(per_class.values())))


# ----------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict(model: DETR, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The model's outputs for a stack of images (N, 3, H, W), in eval mode, batch by batch:
    ``pred_logits``, ``pred_boxes`` and, when the model has them, ``aux_outputs`` (one dict of
    the same two per earlier decoder layer)."""
    check_finite_images(images)
    was_training = model.training
    model.eval()
    device = module_device(model)
    outputs = []
    for start in range(0, len(images), batch_size):
        out = model(to_float(images[start : start + batch_size]).to(device))
        layers = [*out.get("aux_outputs", []), out]  # first decoder layer ... last
        outputs.append([(layer["pred_logits"].cpu(), layer["pred_boxes"].cpu()) for layer in layers])
    model.train(was_training)
    per_layer = [{"pred_logits": torch.cat([batch[i][0] for batch in outputs]),
                  "pred_boxes": torch.cat([batch[i][1] for batch in outputs])} for i in range(len(outputs[0]))]
    result = dict(per_layer[-1])
    if len(per_layer) > 1:
        result["aux_outputs"] = per_layer[:-1]
    return result


def decoder_layer_outputs(outputs: dict) -> list[dict]:
    """Every decoder layer's predictions, first to last: the ``aux_outputs`` then the final ones."""
    final = {"pred_logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
    return [*outputs.get("aux_outputs", []), final]


def apply_nms(detections: list[dict], iou_threshold: float = 0.7) -> list[dict]:
    """Per image and per class, drop every detection whose box has IoU > ``iou_threshold`` with a
    higher-scored one (``torchvision.ops.batched_nms``); the kept ones stay in score order."""
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    kept = []
    for item in detections:
        keep = torchvision.ops.batched_nms(item["boxes"].float(), item["scores"].float(), item["labels"],
                                           iou_threshold)  # (K,) indices, highest score first
        kept.append({key: value[keep] for key, value in item.items()})
    return kept


def detect(model: DETR, images: torch.Tensor, threshold: float = 0.5, nms_iou: float | None = None,
           layer: int = -1) -> list[dict]:
    """Detections (``scores``, ``labels``, ``boxes`` xyxy pixels) for each of the images (N, 3, H, W).

    ``nms_iou``: also apply non-maximum suppression at this IoU (:func:`apply_nms`); DETR needs
    none, which is the point of the set loss. ``layer``: which decoder layer's predictions
    (-1: the last, the model's output; 0: the first auxiliary one).
    """
    layers = decoder_layer_outputs(predict(model, images))
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer must be in [-{len(layers)}, {len(layers)}) for this {len(layers)}-layer "
                         f"decoder (with aux_loss=True), got {layer}")
    sizes = [tuple(images.shape[-2:])] * len(images)
    detections = postprocess(layers[layer], sizes, threshold)
    return apply_nms(detections, nms_iou) if nms_iou is not None else detections


def duplicate_mask(detection: dict, iou_threshold: float = 0.7) -> torch.Tensor:
    """(D,) bool: which of one image's detections have IoU > ``iou_threshold`` with a higher-scored
    detection of the same class (``torchvision.ops.box_iou``)."""
    boxes = detection["boxes"].reshape(-1, 4).float()
    scores, labels = detection["scores"], detection["labels"]
    iou = torchvision.ops.box_iou(boxes, boxes)  # (D, D)
    better = scores[None, :] > scores[:, None]  # better[i, j]: j scored higher than i
    same_class = labels[:, None] == labels[None, :]
    return ((iou > iou_threshold) & better & same_class).any(dim=1)


def duplicate_rate(detections: list[dict], iou_threshold: float = 0.7, score_threshold: float = 0.0) -> float:
    """The fraction of detections scored above ``score_threshold`` whose box has IoU > ``iou_threshold``
    with a higher-scored detection of the same class in the same image: the duplicates that NMS would
    remove. ``detections``: per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,)}``.
    NaN when no detection is above the threshold."""
    if not 0.0 <= iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    _check_detections(detections, "detections", ("boxes", "scores", "labels"))
    duplicates, total = 0, 0
    for item in detections:
        keep = item["scores"] > score_threshold
        confident = {"boxes": item["boxes"].reshape(-1, 4)[keep], "scores": item["scores"][keep],
                     "labels": item["labels"][keep]}
        duplicates += int(duplicate_mask(confident, iou_threshold).sum())
        total += int(keep.sum())
    return duplicates / total if total else float("nan")


def evaluate_detections(detections: list[dict], targets_xyxy: list[dict], score_threshold: float = 0.5,
                        duplicate_iou: float = 0.7) -> dict[str, float]:
    """``map50``, ``map75`` (every detection counts, ranked by score) and ``duplicate_rate`` (of the
    detections above ``score_threshold``) of detections against targets in the same (pixel) units."""
    return {
        "map50": mean_average_precision(detections, targets_xyxy, 0.5),
        "map75": mean_average_precision(detections, targets_xyxy, 0.75),
        "duplicate_rate": duplicate_rate(detections, duplicate_iou, score_threshold),
        "detections_per_image": sum(int((d["scores"] > score_threshold).sum()) for d in detections) / len(detections),
    }


def evaluate_decoder_layers(model: DETR, images: torch.Tensor, targets: list[dict], nms_iou: float | None = None,
                            score_threshold: float = 0.5) -> list[dict[str, float]]:
    """:func:`evaluate_detections` of each decoder layer's own predictions (its auxiliary output; the
    last one is the model's output), first layer first, with NMS at ``nms_iou`` or without (None).
    ``targets``: normalized cxcywh, as :func:`minivit.data.shapes.make_shapes` gives them."""
    layers = decoder_layer_outputs(predict(model, images))
    sizes = [tuple(images.shape[-2:])] * len(images)
    pixels = targets_to_pixels(targets, tuple(images.shape[-2:]))
    results = []
    for outputs in layers:
        detections = postprocess(outputs, sizes, threshold=0.0)
        if nms_iou is not None:
            detections = apply_nms(detections, nms_iou)
        results.append(evaluate_detections(detections, pixels, score_threshold))
    return results


def targets_to_pixels(targets: list[dict], image_size: tuple[int, int]) -> list[dict]:
    """Normalized cxcywh targets -> xyxy pixels (the units of :func:`detect`)."""
    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return [{"labels": t["labels"], "boxes": box_cxcywh_to_xyxy(t["boxes"].float()) * scale} for t in targets]


def evaluate_map(model: DETR, images: torch.Tensor, targets: list[dict], iou_threshold: float = 0.5) -> float:
    """mAP@``iou_threshold`` of ``model`` on a labelled set; every query counts, scored by its best class."""
    predictions = detect(model, images, threshold=0.0)
    return mean_average_precision(predictions, targets_to_pixels(targets, tuple(images.shape[-2:])), iou_threshold)


# ----------------------------------------------------------------------------- training


def lr_scheduler(optimizer, steps: int, schedule: str = "step", lr_drop: float = 0.75, warmup_steps: int = 0):
    """The learning-rate schedule of :func:`train_detr`, stepped once per optimizer step."""
    if schedule == "step" and warmup_steps == 0:  # the original recipe, exactly
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[int(lr_drop * steps)], gamma=0.1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "step":
            return 0.1 if step >= int(lr_drop * steps) else 1.0
        progress = (step - warmup_steps) / max(steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_detr(
    model: DETR,
    images: torch.Tensor,
    targets: list[dict],
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-4,
    weight_decay: float = 1e-4,
    grad_clip: float = 0.1,
    lr_drop: float = 0.75,
    schedule: str = "step",
    warmup_steps: int = 0,
    criterion: SetCriterion | None = None,
    seed: int = 0,
    callback: Callable[[int, DETR], None] | None = None,
    callback_every: int = 0,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> list[dict]:
    """Train ``model`` for ``steps`` optimizer steps on random batches of (images, targets).

    AdamW (``lr``, ``weight_decay``), gradient norm clipped to ``grad_clip``; ``schedule="step"``
    divides the learning rate by 10 after ``lr_drop`` of the steps, ``"cosine"`` lowers it along a
    half cosine to 0; ``warmup_steps`` first raise it linearly from 0. The loss is :class:`SetCriterion`
    (weights CE 1, L1 5, GIoU 2, no-object 0.1, auxiliary losses on every decoder layer).
    ``callback(step, model)`` runs before the first step and every ``callback_every`` steps
    (for snapshots). The model is moved to ``device`` (default: :func:`minivit.devices.get_device`)
    and stays there; the images move batch by batch. Returns one dict per step: ``loss``,
    ``loss_ce``, ``loss_bbox``, ``loss_giou`` (last decoder layer), ``lr`` and the elapsed ``seconds``.
    """
    if len(images) != len(targets) or len(images) == 0:
        raise ValueError(f"need as many targets as images (and at least one), got {len(images)} and {len(targets)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if schedule not in ("step", "cosine"):
        raise ValueError(f"schedule must be 'step' or 'cosine', got {schedule!r}")
    if not 0 <= warmup_steps < steps:
        raise ValueError(f"warmup_steps must be in [0, steps={steps}), got {warmup_steps}")
    check_finite_images(images)  # once, here: a NaN pixel in a step would poison BatchNorm's statistics
    device = get_device(device)
    model.to(device)
    criterion = criterion if criterion is not None else SetCriterion(model.num_classes)
    criterion = criterion.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = lr_scheduler(optimizer, steps, schedule, lr_drop, warmup_steps)
    generator = torch.Generator().manual_seed(seed)
    images_on_device = images.to(device)  # (N, 3, H, W), moved once (uint8: a quarter of float's bytes)
    targets_on_device = [to_device(target, device) for target in targets]
    history, clock = [], Stopwatch.start()
    model.train()
    bar = tqdm(range(steps), desc="training tiny DETR", disable=not progress)
    for step in bar:
        if callback is not None and callback_every and step % callback_every == 0:
            callback(step, model)
        batch = torch.randint(len(images), (batch_size,), generator=generator)  # (B,) on the CPU
        batch_images = to_float(images_on_device[batch])  # (B, 3, H, W) in 0..1
        batch_targets = [targets_on_device[i] for i in batch.tolist()]
        losses = criterion(model(batch_images), batch_targets)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        names = ("loss", "loss_ce", "loss_bbox", "loss_giou")
        record = dict(zip(names, torch.stack([losses[k].detach() for k in names]).tolist()))  # one host copy
        record.update(lr=optimizer.param_groups[0]["lr"], seconds=clock.seconds)
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
    if callback is not None and callback_every:
        callback(steps, model)
    model.eval()
    return history


# ----------------------------------------------------------------------------- the shipped checkpoint


def save_tiny_detr(model: DETR, path, config: DETRConfig | dict | None, classes, image_size: int,
                   metrics: dict | None = None) -> Path:
    """Save a tiny DETR in minivit's checkpoint format (:func:`minivit.train.save_checkpoint`), with its
    ``classes``, ``image_size`` and ``metrics``. ``config``: the model's :class:`DETRConfig` (or
    :func:`build_tiny_detr` keyword arguments, or None: the model's own)."""
    if isinstance(config, dict):
        config = DETRConfig.resolve(TINY_DETR_CONFIG, config)
    meta = {"classes": list(classes), "image_size": int(image_size), "metrics": dict(metrics or {})}
    return save_checkpoint(path, model, meta=meta, config=config)


def load_tiny_detr(path=None, map_location="cpu") -> tuple[DETR, dict]:
    """The tiny DETR trained on the synthetic shapes (chapter 6), in eval mode, and its info
    (``config``, ``classes``, ``image_size``, ``metrics``). Default: the shipped checkpoint."""
    path = Path(path) if path is not None else TINY_DETR_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"no tiny-DETR checkpoint at {path}; run notebooks/06_hungarian_matching.ipynb, "
            f"which trains one and saves it (runs/06_tiny_detr_shapes.pt)"
        )
    architecture = read_checkpoint(path, map_location)["architecture"]
    if architecture != "detr":  # checked before any model is built
        raise ValueError(f"{path} holds a {architecture} model, not a DETR; give a checkpoint saved by "
                         f"save_tiny_detr (chapter 6), or load it with minivit.train.load_checkpoint")
    model, info = load_checkpoint(path, map_location=map_location)
    return model, {key: info[key] for key in ("config", "classes", "image_size", "metrics")}
