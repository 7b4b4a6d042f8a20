"""Chapter 6: Hungarian matching and DETR's set-prediction loss.

DETR predicts a fixed set of Q boxes per image; the loss first finds the one-to-one
assignment of predictions to the T ground-truth objects that costs least, then scores
only the matched pairs (the rest must predict "no object").

* :func:`matching_cost_terms` / :func:`matching_cost`: the cost matrix (class, L1, -GIoU; weights 1/5/2);
* :func:`hungarian`: the Kuhn-Munkres algorithm written out (shortest augmenting paths with
  potentials, O(n^2 m), vectorized over columns with NumPy), with an optional step recorder;
* :func:`brute_force_assignment`: every permutation, for checking on small matrices;
* :class:`HungarianMatcher`: batched matching (production path: ``scipy.optimize.linear_sum_assignment``);
* :class:`SetCriterion`: cross-entropy (no-object weight 0.1) + L1 + GIoU, with auxiliary losses.

Run ``python -m minivit.matching --bench`` for the speed figures.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from minivit.boxes import _cxcywh_to_xyxy, _generalized_box_iou, box_cxcywh_to_xyxy, generalized_box_iou
from minivit.devices import timed

# ----------------------------------------------------------------------------- the assignment problem


def _as_cost_matrix(cost) -> np.ndarray:
    """A finite 2D float64 NumPy copy of ``cost``, or a ValueError that says what is wrong."""
    if isinstance(cost, torch.Tensor):
        cost = cost.detach().cpu().numpy()
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2:
        raise ValueError(f"the cost matrix must be 2D (rows, cols), got shape {cost.shape}")
    _check_finite(cost)
    return cost


def _check_finite(cost: np.ndarray, where: str = "the cost matrix", detail: str = "") -> None:
    bad = ~np.isfinite(cost)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{where} has {int(bad.sum())} NaN/inf entries (first at row {row}, col {col}: {cost[row, col]}){detail}; "
            f"a NaN cost usually means the model's outputs diverged (lower the learning rate, clip gradients)"
        )


def hungarian(cost, record: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of a rectangular (n, m) cost matrix, written out.

    Returns ``(rows, cols)`` like ``scipy.optimize.linear_sum_assignment``: ``min(n, m)``
    pairs, sorted by row, such that ``cost[rows, cols].sum()`` is minimal.

    The algorithm (Kuhn-Munkres in its shortest-augmenting-path form): keep potentials
    ``u`` (rows) and ``v`` (columns) with ``cost - u - v >= 0`` (the *reduced* cost) and a
    partial matching that uses only zero reduced-cost cells. Add the rows one at a time: grow
    a tree of alternating paths from the new row (Dijkstra on the reduced costs); each time
    no zero cell leads further, shift the potentials by the smallest reduced cost ``delta``
    (a new zero appears); once the path reaches a free column, flip the path (augment).
    With ``record`` (a list), each step is appended as a dict with the reduced cost matrix,
    the current assignment and what happened, for the notebook's walkthrough.
    """
    cost = _as_cost_matrix(cost)
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:  # the algorithm wants rows <= cols: solve the transpose and swap back
        cost = cost.T
    n, m = cost.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def note(step: str, **info) -> None:
        if record is None:
            return
        reduced = cost - u[:n, None] - v[None, :m]  # (n, m), >= 0, zero on matched cells
        matched = row_of_col[:m] >= 0
        rows, cols = row_of_col[:m][matched], np.flatnonzero(matched)
        if transposed:
            reduced, rows, cols = reduced.T, cols, rows
        order = np.argsort(rows)
        record.append({"step": step, "reduced": reduced.copy(), "assignment": (rows[order], cols[order]), **info})

    # Column m is a dummy "root" column that holds the row being added; potentials start at
    # u = row minima, v = 0 (feasible), and every row whose minimum column is still free takes it.
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    row_of_col = np.full(m + 1, -1)  # row_of_col[j] = row matched to column j, -1 if free
    padded = np.hstack([cost, np.zeros((n, 1))])  # (n, m + 1), the dummy column is never priced
    u[:n] = cost.min(axis=1)
    for row, col in enumerate(cost.argmin(axis=1)):
        if row_of_col[col] < 0:
            row_of_col[col] = row
    note("init: subtract each row's minimum; rows take their cheapest free column")

    matched_rows = set(row_of_col[:m][row_of_col[:m] >= 0].tolist())
    for row in range(n):
        if row in matched_rows:
            continue
        row_of_col[m] = row
        col = m  # the current end of the alternating tree
        min_slack = np.full(m + 1, np.inf)  # smallest reduced cost reaching each column so far
        came_from = np.full(m + 1, m)  # the tree column we reached each column from
        in_tree = np.zeros(m + 1, dtype=bool)
        while True:
            in_tree[col] = True
            tree_row = row_of_col[col]
            slack = padded[tree_row] - u[tree_row] - v  # (m + 1,) reduced costs of that row
            better = (slack < min_slack) & ~in_tree
            min_slack = np.where(better, slack, min_slack)
            came_from = np.where(better, col, came_from)
            candidates = np.where(in_tree, np.inf, min_slack)
            next_col = int(candidates.argmin())
            delta = candidates[next_col]
            # Shift potentials: tree rows up, tree columns down; reduced costs inside the tree
            # stay zero, and the cheapest edge leaving the tree becomes zero.
            u[row_of_col[in_tree]] += delta
            v[in_tree] -= delta
            min_slack -= delta
            col = next_col
            if delta > 0:
                note("no zero leads on: shift potentials by the smallest reduced cost", row=row, delta=float(delta))
            if row_of_col[col] < 0:  # reached a free column: augment along the path
                break
        path = [col]
        while col != m:  # flip matched/unmatched along the path back to the root
            previous = came_from[col]
            row_of_col[col] = row_of_col[previous]
            col = previous
            path.append(col)
        row_of_col[m] = -1
        note("augment: flip the alternating path to a free column", row=row,
             path_cols=[int(c) for c in path[:-1][::-1]])

    cols = np.flatnonzero(row_of_col[:m] >= 0)
    rows = row_of_col[cols]
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def brute_force_assignment(cost) -> tuple[np.ndarray, np.ndarray]:
    """The optimal assignment by trying every injective map (only for tiny matrices, <= 8 x 8)."""
    cost = _as_cost_matrix(cost)
    transposed = cost.shape[0] > cost.shape[1]
    if transposed:
        cost = cost.T
    n, m = cost.shape
    if m > 8:
        raise ValueError(f"brute force over {m}!/{m - n}! assignments is too slow; use at most 8 columns")
    rows = np.arange(n)
    best = min(itertools.permutations(range(m), n), key=lambda cols: cost[rows, list(cols)].sum(), default=())
    cols = np.array(best, dtype=np.int64)
    if transposed:
        order = np.argsort(cols)
        return cols[order], rows[order]
    return rows.astype(np.int64), cols


# ----------------------------------------------------------------------------- DETR's matching cost


def matching_cost_terms(pred_logits, pred_boxes, target_labels, target_boxes, checked: bool = False
                        ) -> dict[str, torch.Tensor]:
    """The three unweighted cost matrices between Q predictions and T targets, each (Q, T).

    * ``class``: ``-p(target class)`` (softmax over the C + 1 logits);
    * ``bbox``:  L1 distance between the normalized cxcywh boxes;
    * ``giou``:  ``-GIoU`` of the boxes (in xyxy).
    Shapes: logits (Q, C + 1), boxes (Q, 4), labels (T,), target boxes (T, 4); or with a
    leading batch dimension B on all four, giving (B, Q, T). ``checked=True`` skips the box checks
    (each one a host sync) for inputs the caller has already checked.
    """
    probs = pred_logits.softmax(-1)  # (..., Q, C + 1)
    labels = target_labels.unsqueeze(-2).expand(*probs.shape[:-1], target_labels.shape[-1])  # (..., Q, T)
    to_xyxy, giou = (_cxcywh_to_xyxy, _generalized_box_iou) if checked else (box_cxcywh_to_xyxy, generalized_box_iou)
    return {
        "class": -probs.gather(-1, labels),  # (..., Q, T)
        "bbox": torch.cdist(pred_boxes, target_boxes.to(pred_boxes), p=1),  # (..., Q, T)
        "giou": -giou(to_xyxy(pred_boxes), to_xyxy(target_boxes.to(pred_boxes))),
    }


def matching_cost(pred_logits, pred_boxes, target_labels, target_boxes, weights=(1.0, 5.0, 2.0),
                  checked: bool = False) -> torch.Tensor:
    """The weighted total cost ``w_class * class + w_bbox * L1 + w_giou * (-GIoU)``, (Q, T) or (B, Q, T)."""
    terms = matching_cost_terms(pred_logits, pred_boxes, target_labels, target_boxes, checked)
    return weights[0] * terms["class"] + weights[1] * terms["bbox"] + weights[2] * terms["giou"]


def _check_outputs(outputs) -> None:
    """``outputs`` must hold pred_logits (B, Q, C + 1) and pred_boxes (B, Q, 4) tensors of one batch, B >= 1."""
    if not isinstance(outputs, dict) or not all(isinstance(outputs.get(k), torch.Tensor)
                                                for k in ("pred_logits", "pred_boxes")):
        got = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise TypeError(f"outputs must be a dict with tensors 'pred_logits' (B, Q, C + 1) and 'pred_boxes' "
                        f"(B, Q, 4), as DETR returns; got {got}")
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    if logits.dim() != 3 or boxes.dim() != 3 or boxes.shape[-1] != 4 or logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"outputs['pred_logits'] must be (B, Q, C + 1) and outputs['pred_boxes'] (B, Q, 4), got "
                         f"{tuple(logits.shape)} and {tuple(boxes.shape)}")
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"outputs['pred_logits'] {tuple(logits.shape)} holds no images or no queries; "
                         f"pass a batch of at least one image")


def _check_targets(targets, num_queries: int) -> None:
    if not isinstance(targets, (list, tuple)) or not all(isinstance(t, dict) for t in targets):
        raise TypeError(f"targets must be a list of dicts (one per image) with 'labels' (T,) and 'boxes' (T, 4), "
                        f"got {type(targets).__name__}")
    for index, target in enumerate(targets):
        if "labels" not in target or "boxes" not in target:
            raise ValueError(
                f"targets[{index}] must be a dict with 'labels' (T,) and 'boxes' (T, 4), got {list(target)}"
            )
        labels, boxes = target["labels"], target["boxes"]
        if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
            raise ValueError(
                f"targets[{index}] has labels {tuple(labels.shape)} and boxes {tuple(boxes.shape)}; "
                f"expected labels (T,) and boxes (T, 4) in normalized cxcywh"
            )
        if len(labels) > num_queries:
            raise ValueError(
                f"targets[{index}] has {len(labels)} objects but the model predicts only {num_queries} queries; "
                f"every object needs its own query: build the model with num_queries >= {len(labels)}"
            )


def check_target_values(targets, num_classes: int) -> None:
    """Check every target's labels and boxes, with one device -> host copy for the whole batch.

    Labels must be integers in ``[0, num_classes)`` (``num_classes`` is the "no object" index, not a class);
    boxes finite, normalized cxcywh with every coordinate in [0, 1] and non-negative width and height.
    Raises one ValueError naming the first bad image and box and the fix. Shapes are checked
    first by :func:`_check_targets`.
    """
    for index, target in enumerate(targets):
        labels, boxes = target["labels"], target["boxes"]
        if not isinstance(labels, torch.Tensor) or labels.dtype == torch.bool or labels.is_floating_point() \
                or labels.is_complex():
            what = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise TypeError(f"targets[{index}]['labels'] must be an integer tensor of class indices, got {what}; "
                            f"use torch.as_tensor(labels, dtype=torch.int64)")
        if not isinstance(boxes, torch.Tensor) or not boxes.is_floating_point():
            what = boxes.dtype if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise TypeError(f"targets[{index}]['boxes'] must be a floating-point tensor (T, 4) of normalized "
                            f"cxcywh boxes, got {what}")
    rows = [torch.cat([t["labels"].detach().reshape(-1, 1).to(t["boxes"].device, torch.float32),
                       t["boxes"].detach().to(torch.float32)], dim=1) for t in targets if len(t["labels"])]
    if not rows:
        return
    device = rows[0].device
    table = torch.cat([row.to(device) for row in rows]).cpu().numpy()  # (sum T, 5): the only host sync
    labels, boxes = table[:, 0], table[:, 1:]
    with np.errstate(invalid="ignore"):
        problems = [
            (labels == num_classes, "has label {label:g} = num_classes, the 'no object' index, which is not a class; "
                                    f"object classes are 0..{num_classes - 1}: drop the box or fix its label"),
            ((labels < 0) | (labels > num_classes),
             f"has label {{label:g}}, outside the classes 0..{num_classes - 1}; fix the label or build the model and "
             f"SetCriterion with a larger num_classes"),
            (~np.isfinite(boxes).all(axis=1), "box {box} contains NaN or inf; drop or repair the box"),
            ((boxes[:, 2:] < 0).any(axis=1), "box {box} has a negative width or height; boxes must be cxcywh "
                                             "(centre x, centre y, width, height), convert xyxy with "
                                             "minivit.boxes.box_xyxy_to_cxcywh"),
            (((boxes < 0) | (boxes > 1)).any(axis=1),
             "box {box} is not normalized: every cxcywh coordinate must be in [0, 1] (fractions of the image); "
             "boxes in pixels must be divided by the image width and height (minivit.boxes.normalize_boxes)"),
        ]
    starts = np.cumsum([0] + [len(t["labels"]) for t in targets])
    for bad, message in problems:
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            image = int(np.searchsorted(starts, row, side="right") - 1)
            box_index = row - int(starts[image])
            text = message.format(label=labels[row], box=[round(float(x), 4) for x in boxes[row]])
            raise ValueError(f"targets[{image}] object {box_index} (labels[{box_index}], boxes[{box_index}]) {text} "
                             f"({int(bad.sum())} bad object(s) in this batch)")


class HungarianMatcher(nn.Module):
    """One-to-one matching of predictions to targets, image by image.

    ``forward(outputs, targets)`` takes ``outputs["pred_logits"]`` (B, Q, C + 1) and
    ``outputs["pred_boxes"]`` (B, Q, 4) and a list of B target dicts (``labels`` (T_b,),
    ``boxes`` (T_b, 4) normalized cxcywh; T_b may be 0) and returns B pairs
    ``(query_indices, target_indices)`` of int64 tensors, each of length T_b.
    ``solver="scipy"`` (default, fast C code) or ``"minivit"`` (:func:`hungarian`).
    """

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0, solver: str = "scipy"):
        super().__init__()
        if solver not in ("scipy", "minivit"):
            raise ValueError(f"solver must be 'scipy' or 'minivit', got {solver!r}")
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("all matching cost weights are 0: nothing to match on")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.solve = linear_sum_assignment if solver == "scipy" else hungarian

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict], checked: bool = False
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``checked=True``: the targets' values were already checked (by :class:`SetCriterion`, once per call)."""
        _check_outputs(outputs)
        batch, num_queries = outputs["pred_logits"].shape[:2]
        if len(targets) != batch:
            raise ValueError(f"targets: got {len(targets)} target dicts for a batch of {batch} images")
        _check_targets(targets, num_queries)
        if not checked:
            check_target_values(targets, outputs["pred_logits"].shape[-1] - 1)
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.zeros(0, dtype=torch.int64)
        if max(sizes, default=0) == 0:
            return [(empty, empty) for _ in targets]
        # Pad every image's targets to the largest count (padding: a dummy box, sliced off
        # below) and cost all images at once: (B, Q, T_max), not all queries x all targets.
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        labels = logits.new_zeros(batch, max(sizes), dtype=torch.int64)
        boxes = pred_boxes.new_full((batch, max(sizes), 4), 0.5)
        for image, target in enumerate(targets):
            labels[image, : sizes[image]] = target["labels"]
            boxes[image, : sizes[image]] = target["boxes"]
        weights = (self.cost_class, self.cost_bbox, self.cost_giou)
        cost = matching_cost(logits, pred_boxes, labels, boxes, weights, checked=True)  # (B, Q, T_max)
        cost = cost.cpu().numpy()  # one host sync; NaN predictions are caught in the finite check below
        indices = []
        for image, size in enumerate(sizes):
            if size == 0:
                indices.append((empty, empty))
                continue
            if not np.isfinite(cost[image, :, :size]).all():  # the error path: locate the bad output
                detail = ""
                for key in ("pred_logits", "pred_boxes"):
                    bad = ~torch.isfinite(outputs[key][image].detach()).all(dim=-1)
                    if bad.any():
                        detail += f"; outputs['{key}'][{image}, {int(bad.nonzero()[0, 0])}] contains NaN or inf"
                _check_finite(cost[image, :, :size], f"the matching cost of image {image}", detail)
            rows, cols = self.solve(cost[image, :, :size])
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


# ----------------------------------------------------------------------------- the set-prediction loss


class SetCriterion(nn.Module):
    """DETR's loss: match, then cross-entropy on all queries + L1 and GIoU on matched boxes.

    * ``loss_ce``: cross-entropy over C + 1 classes, unmatched queries must say "no object"
      (class index C), whose weight is ``eos_coef`` = 0.1 (most queries are "no object");
    * ``loss_bbox``: L1 between matched normalized cxcywh boxes, summed, divided by the number of boxes;
    * ``loss_giou``: 1 - GIoU of the matched boxes, likewise normalized.
    Each of ``outputs["aux_outputs"]`` (the earlier decoder layers) is matched and scored the
    same way (keys suffixed ``_0``, ``_1``, ...). ``loss`` is the weighted sum of everything
    (weights CE 1, L1 5, GIoU 2).
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None, eos_coef: float = 0.1,
                 weight_ce: float = 1.0, weight_bbox: float = 5.0, weight_giou: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.weights = {"loss_ce": weight_ce, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef  # the "no object" class
        self.register_buffer("class_weight", class_weight)

    def single_layer_losses(self, outputs: dict, targets: list[dict], num_boxes: float) -> dict[str, torch.Tensor]:
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]  # (B, Q, C + 1), (B, Q, 4)
        if logits.shape[-1] != self.num_classes + 1:
            raise ValueError(
                f"pred_logits has {logits.shape[-1]} classes, expected num_classes + 1 = {self.num_classes + 1}"
            )
        indices = self.matcher(outputs, targets, checked=True)
        image_index = torch.cat([torch.full_like(query, image) for image, (query, _) in enumerate(indices)])
        query_index = torch.cat([query for query, _ in indices])
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        matched_labels = torch.cat([t["labels"][target] for t, (_, target) in zip(targets, indices)]).to(logits.device)
        target_classes[image_index, query_index] = matched_labels  # (B, Q), "no object" where unmatched
        loss_ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=self.class_weight)

        matched_pred = pred_boxes[image_index, query_index]  # (sum T, 4)
        matched_target = torch.cat([t["boxes"][target] for t, (_, target) in zip(targets, indices)]).to(pred_boxes)
        loss_bbox = F.l1_loss(matched_pred, matched_target, reduction="sum") / num_boxes
        # Unchecked box helpers: the targets were checked at the entry, matched predictions passed the matcher's
        # finite check; a check here would cost host syncs in every training step.
        giou = torch.diag(_generalized_box_iou(_cxcywh_to_xyxy(matched_pred), _cxcywh_to_xyxy(matched_target)))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, torch.Tensor]:
        for layer_outputs in [outputs] + list(outputs.get("aux_outputs", []) if isinstance(outputs, dict) else []):
            _check_outputs(layer_outputs)
        if not isinstance(targets, (list, tuple)):
            raise TypeError(f"targets must be a list of dicts (one per image), got {type(targets).__name__}")
        logits = outputs["pred_logits"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"targets: got {len(targets)} target dicts for a batch of {logits.shape[0]} images")
        _check_targets(targets, logits.shape[1])
        check_target_values(targets, self.num_classes)  # once per call, one host sync, not once per layer
        num_boxes = max(sum(len(t["labels"]) for t in targets), 1)  # a batch without objects still trains
        layers = [outputs] + list(outputs.get("aux_outputs", []))  # last decoder layer first, then the earlier ones
        losses, total = {}, 0.0
        for layer, layer_outputs in enumerate(layers):
            suffix = "" if layer == 0 else f"_{layer - 1}"
            for name, value in self.single_layer_losses(layer_outputs, targets, num_boxes).items():
                losses[name + suffix] = value
                total = total + self.weights[name] * value
        losses["loss"] = total
        return losses


# ----------------------------------------------------------------------------- benchmark


def _time(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        with timed() as clock:
            fn()
        times.append(clock.seconds)
    return float(np.median(times))


def benchmark(seed: int = 0) -> dict[str, float]:
    """Speed figures: a 64 x 100-query batch with up to 20 targets each, and hungarian vs scipy."""
    generator = torch.Generator().manual_seed(seed)
    batch, queries, classes = 64, 100, 91
    outputs = {"pred_logits": torch.randn(batch, queries, classes + 1, generator=generator),
               "pred_boxes": torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.25}
    targets = []
    for _ in range(batch):
        count = int(torch.randint(0, 21, (1,), generator=generator))
        targets.append({"labels": torch.randint(0, classes, (count,), generator=generator),
                        "boxes": torch.rand(count, 4, generator=generator) * 0.5 + 0.25})
    results = {}
    for solver in ("scipy", "minivit"):
        matcher = HungarianMatcher(solver=solver)
        results[f"batch_ms_{solver}"] = 1e3 * _time(lambda: matcher(outputs, targets), 20)
    rng = np.random.default_rng(seed)
    for rows, cols in ((100, 20), (200, 200)):
        cost = rng.random((rows, cols))
        repeat = 200 if rows * cols < 10_000 else 10
        ours, theirs = _time(lambda: hungarian(cost), repeat), _time(lambda: linear_sum_assignment(cost), repeat)
        results[f"{rows}x{cols}_us_minivit"], results[f"{rows}x{cols}_us_scipy"] = 1e6 * ours, 1e6 * theirs
        results[f"{rows}x{cols}_ratio"] = ours / theirs
    return results


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="minivit.matching: Hungarian matching benchmark")
    parser.add_argument("--bench", action="store_true", help="time the matcher and hungarian() against scipy")
    args = parser.parse_args(argv)
    if not args.bench:
        parser.print_help()
        return
    torch.set_num_threads(1)
    r = benchmark()
    print("HungarianMatcher, batch of 64 images x 100 queries x 0-20 targets (91 classes):")
    print(f"  scipy solver:   {r['batch_ms_scipy']:.1f} ms per batch")
    print(f"  minivit solver: {r['batch_ms_minivit']:.1f} ms per batch")
    for shape in ("100x20", "200x200"):
        print(f"hungarian() vs scipy.optimize.linear_sum_assignment on a random {shape} matrix: "
              f"{r[shape + '_us_minivit']:.0f} us vs {r[shape + '_us_scipy']:.0f} us = {r[shape + '_ratio']:.1f}x")


if __name__ == "__main__":
    main()
