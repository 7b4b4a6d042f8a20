"""Chapter 6 exercises: GIoU, the matching cost, a Hungarian reduction step, set-loss targets, mAP thresholds."""
from __future__ import annotations

import numpy as np
import torch

from minivit.boxes import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from minivit.exercises.base import Exercise, call, compare, letter_checker
from minivit.matching import matching_cost, matching_cost_terms

NOTEBOOK = "06_hungarian_matching.ipynb"


def _random_xyxy(gen, n):
    corner = torch.rand(n, 2, generator=gen) * 0.7
    size = torch.rand(n, 2, generator=gen) * 0.4 + 0.05
    return torch.cat([corner, corner + size], dim=1)


def _check_giou(fn) -> None:
    gen = torch.Generator().manual_seed(10)
    far = torch.tensor([[0.0, 0.0, 0.1, 0.1], [0.2, 0.2, 0.4, 0.5]])
    cases = [(_random_xyxy(gen, 4), _random_xyxy(gen, 3)), (far, torch.tensor([[0.8, 0.8, 0.9, 1.0]])),
             (far[:1], far[:1].clone())]
    for boxes1, boxes2 in cases:
        on = f"boxes {tuple(boxes1.shape)} and {tuple(boxes2.shape)}" + (
            " that do not overlap" if boxes1 is far else "")
        got = call(fn, boxes1.clone(), boxes2.clone(), on=on)
        expected = generalized_box_iou(boxes1, boxes2)
        iou, union = box_iou(boxes1, boxes2)
        b1, b2 = boxes1[:, None], boxes2[None]
        size = (torch.max(b1[..., 2:], b2[..., 2:]) - torch.min(b1[..., :2], b2[..., :2]))
        enclosing = size[..., 0] * size[..., 1]
        compare(got, expected, on=on, wrong={
            "that is the plain IoU: subtract the part of the enclosing box C that neither box covers, |C - U| / |C|":
                iou,
            "the penalty is divided by the union; GIoU divides |C - U| by the enclosing box |C|":
                iou - (enclosing - union) / union,
            "the enclosing box is built like the intersection (max of the top-left corners); C takes the min of "
            "the top-left and the max of the bottom-right corners": _inner_enclosing_giou(boxes1, boxes2),
        })


def _inner_enclosing_giou(boxes1, boxes2):
    iou, union = box_iou(boxes1, boxes2)
    b1, b2 = boxes1[:, None], boxes2[None]
    size = (torch.min(b1[..., 2:], b2[..., 2:]) - torch.max(b1[..., :2], b2[..., :2]))  # the intersection's sides
    wrong_c = size[..., 0] * size[..., 1]
    return iou - (wrong_c - union) / wrong_c


ex1 = Exercise(
    name="ex1", title="generalized IoU", kind="implement",
    prompt="""
    Write `my_giou(boxes1, boxes2)`: the generalized IoU of every pair of xyxy boxes, (N, 4) and (M, 4) -> (N, M):
    `IoU - |C - (A ∪ B)| / |C|` with C the smallest box enclosing A and B. You may use
    `minivit.boxes.box_iou(boxes1, boxes2)`, which returns `(iou, union)`. The checker includes boxes that
    do not overlap, where GIoU and IoU differ most.
    """,
    starter="""
    from minivit.boxes import box_iou  # noqa: F401, F811
    from minivit.exercises.ch6 import ex1


    def my_giou(boxes1, boxes2):
        raise NotImplementedError  # your code here


    ex1.check(my_giou)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="my_giou",
    solution_code="""
import torch

from minivit.boxes import box_iou


def my_giou(boxes1, boxes2):
    iou, union = box_iou(boxes1, boxes2)  # (N, M) each
    b1, b2 = boxes1[:, None], boxes2[None]  # (N, 1, 4), (1, M, 4)
    sides = torch.max(b1[..., 2:], b2[..., 2:]) - torch.min(b1[..., :2], b2[..., :2])  # (N, M, 2)
    enclosing = sides[..., 0] * sides[..., 1]
    return iou - (enclosing - union) / enclosing
""",
    hints=("Broadcast boxes1[:, None] against boxes2[None] to get every pair; C's corners are the outermost "
           "corners of the two boxes.",
           "C's top-left is the min of the top-left corners, its bottom-right the max of the bottom-right ones; "
           "GIoU = iou - (area(C) - union) / area(C)."),
    checker=_check_giou, anchor="## 3. The Hungarian algorithm",
    recognised=("plain IoU", "penalty divided by the union", "enclosing box built like the intersection"),
)


def _check_cost(fn) -> None:
    gen = torch.Generator().manual_seed(11)
    for queries, targets, classes in [(6, 3, 4), (10, 1, 3), (3, 3, 2)]:
        logits = torch.randn(queries, classes + 1, generator=gen) * 2
        boxes = torch.cat([torch.rand(queries, 2, generator=gen) * 0.6 + 0.2,
                           torch.rand(queries, 2, generator=gen) * 0.3 + 0.05], 1)
        labels = torch.randint(0, classes, (targets,), generator=gen)
        target_boxes = torch.cat([torch.rand(targets, 2, generator=gen) * 0.6 + 0.2,
                                  torch.rand(targets, 2, generator=gen) * 0.3 + 0.05], 1)
        on = f"{queries} queries, {targets} targets, {classes} classes + no object"
        got = call(fn, logits.clone(), boxes.clone(), labels.clone(), target_boxes.clone(), on=on)
        expected = matching_cost(logits, boxes, labels, target_boxes)
        terms = matching_cost_terms(logits, boxes, labels, target_boxes)
        raw_class = -logits[:, labels]
        xyxy_l1 = torch.cdist(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes), p=1)
        compare(got, expected, on=on, atol=1e-4, wrong={
            "the class term has the wrong sign: a likely class must make the cost lower, so use -p(class)":
                expected - 2 * terms["class"],
            "the class term uses the raw logits; take the softmax probabilities first":
                raw_class + 5 * terms["bbox"] + 2 * terms["giou"],
            "the GIoU term has the wrong sign: overlapping boxes must cost less, so use -GIoU":
                expected - 4 * terms["giou"],
            "the L1 distance is taken between xyxy corners; DETR's L1 term compares the normalized cxcywh boxes":
                terms["class"] + 5 * xyxy_l1 + 2 * terms["giou"],
            "the weights are missing: the cost is 1 * class + 5 * L1 + 2 * (-GIoU)":
                terms["class"] + terms["bbox"] + terms["giou"],
        })


ex2 = Exercise(
    name="ex2", title="DETR's matching cost", kind="implement",
    prompt="""
    Write `my_cost_matrix(logits, boxes, labels, target_boxes)`: the (Q, T) cost between Q predictions (logits
    (Q, C + 1), cxcywh boxes (Q, 4)) and T targets (labels (T,), cxcywh boxes (T, 4)):
    `1 * (-p(target class)) + 5 * L1(boxes) + 2 * (-GIoU)`, with `torch.cdist(..., p=1)` for the L1 term and
    `minivit.boxes.generalized_box_iou` on xyxy boxes.
    """,
    starter="""
    import torch  # noqa: F401, F811

    from minivit.boxes import box_cxcywh_to_xyxy, generalized_box_iou  # noqa: F401, F811
    from minivit.exercises.ch6 import ex2


    def my_cost_matrix(logits, boxes, labels, target_boxes):
        raise NotImplementedError  # your code here


    ex2.check(my_cost_matrix)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="my_cost_matrix",
    solution_code="""
import torch

from minivit.boxes import box_cxcywh_to_xyxy, generalized_box_iou


def my_cost_matrix(logits, boxes, labels, target_boxes):
    cost_class = -logits.softmax(-1)[:, labels]  # (Q, T): minus the probability of each target's class
    cost_bbox = torch.cdist(boxes, target_boxes, p=1)  # (Q, T), on normalized cxcywh
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target_boxes))
    return 1 * cost_class + 5 * cost_bbox + 2 * cost_giou
""",
    hints=("Three (Q, T) matrices. A cost is low for a good match: which sign do the probability and the GIoU "
           "need?",
           "-softmax(logits)[:, labels], torch.cdist(boxes, target_boxes, p=1) on cxcywh, and -GIoU on xyxy; "
           "weights 1, 5, 2."),
    checker=_check_cost, anchor="## 3. The Hungarian algorithm",
    recognised=("class term sign", "raw logits", "GIoU sign", "L1 on xyxy", "weights missing"),
)


def _reduce(cost: np.ndarray) -> np.ndarray:
    reduced = cost - cost.min(axis=1, keepdims=True)
    return reduced - reduced.min(axis=0, keepdims=True)


def _check_reduce(fn) -> None:
    rng = np.random.default_rng(12)
    cases = [rng.integers(0, 20, (4, 4)).astype(float), np.array([[4.0, 1, 3], [2, 0, 5], [3, 2, 2]]),
             rng.random((5, 5)) * 10, np.array([[7.0]])]
    for cost in cases:
        on = f"the {cost.shape[0]}x{cost.shape[1]} cost matrix {np.round(cost, 2).tolist()}"
        got = call(fn, cost.copy(), on=on)
        expected = _reduce(cost)
        cols_first = cost - cost.min(axis=0, keepdims=True)
        cols_first = cols_first - cols_first.min(axis=1, keepdims=True)
        compare(torch.as_tensor(np.asarray(got, dtype=float)), torch.as_tensor(expected), on=on, wrong={
            "only the rows were reduced: then subtract each column's minimum as well":
                torch.as_tensor(cost - cost.min(axis=1, keepdims=True)),
            "columns first: the course (and Kuhn-Munkres' usual statement) reduces rows first, then columns":
                torch.as_tensor(cols_first),
            "the maxima were subtracted; subtract the minima, so every entry stays >= 0 and each row gets a zero":
                torch.as_tensor((cost - cost.max(axis=1, keepdims=True)) - (cost - cost.max(axis=1, keepdims=True))
                                .max(axis=0, keepdims=True)),
        })


ex3 = Exercise(
    name="ex3", title="the first step of the Hungarian algorithm", kind="implement",
    prompt="""
    The Hungarian algorithm starts by reducing the cost matrix: subtract from each row its minimum, then
    from each column of the result its minimum. The optimal assignment does not change, and every row and
    column now has a zero. Write `my_reduce_cost(cost)` for a square NumPy array.
    """,
    starter="""
    from minivit.exercises.ch6 import ex3


    def my_reduce_cost(cost):
        raise NotImplementedError  # your code here


    ex3.check(my_reduce_cost)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="my_reduce_cost",
    solution_code="""
def my_reduce_cost(cost):
    reduced = cost - cost.min(axis=1, keepdims=True)  # each row's minimum
    return reduced - reduced.min(axis=0, keepdims=True)  # then each column's
""",
    hints=("Two subtractions with broadcasting; keepdims=True keeps the minima lined up with their rows or "
           "columns.",
           "cost - cost.min(axis=1, keepdims=True), then the same with axis=0 on the result."),
    checker=_check_reduce, anchor="## 4. Checking",
    recognised=("rows only", "columns first", "maxima subtracted"),
)


def _check_targets(fn) -> None:
    cases = [(6, [4, 1], [0, 1], [2, 0], 3), (5, [0, 3, 2], [2, 0, 1], [1, 1, 0], 2), (3, [], [], [], 4)]
    for queries, query_index, target_index, labels, classes in cases:
        query_index, target_index, labels = (torch.tensor(v, dtype=torch.int64) for v in (query_index, target_index,
                                                                                         labels))
        on = (f"{queries} queries, matches (query, target) {list(zip(query_index.tolist(), target_index.tolist()))}, "
              f"labels {labels.tolist()}, {classes} classes")
        got = call(fn, queries, query_index.clone(), target_index.clone(), labels.clone(), classes, on=on)
        expected = torch.full((queries,), classes, dtype=torch.int64)
        expected[query_index] = labels[target_index]

        def variant(fill, ordered):
            out = torch.full((queries,), fill, dtype=torch.int64)
            out[query_index] = labels[: len(query_index)] if ordered else labels[target_index]
            return out

        compare(got, expected, on=on, wrong={
            "the unmatched queries got class 0, a real class; they must learn 'no object', index num_classes":
                variant(0, False),
            "the unmatched queries got -1; the no-object class is a real output of the classifier, index num_classes":
                variant(-1, False),
            "the labels are given in target order; query_index[k] is matched to target target_index[k], so use "
            "labels[target_index]": variant(classes, True),
        })


ex4 = Exercise(
    name="ex4", title="the class targets of the set loss", kind="implement",
    prompt="""
    After matching, query `query_index[k]` is assigned target `target_index[k]`. Write
    `my_class_targets(num_queries, query_index, target_index, labels, num_classes)`: the (num_queries,) int64
    tensor of classes the cross-entropy trains towards, with every unmatched query labelled "no object".
    """,
    starter="""
    from minivit.exercises.ch6 import ex4


    def my_class_targets(num_queries, query_index, target_index, labels, num_classes):
        raise NotImplementedError  # your code here


    ex4.check(my_class_targets)
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="my_class_targets",
    solution_code="""
import torch


def my_class_targets(num_queries, query_index, target_index, labels, num_classes):
    targets = torch.full((num_queries,), num_classes, dtype=torch.int64)  # 'no object' is the last class
    targets[query_index] = labels[target_index]
    return targets
""",
    hints=("What is the index of the 'no object' class among the C + 1 logits? Fill with it first.",
           "torch.full((num_queries,), num_classes), then targets[query_index] = labels[target_index]."),
    checker=_check_targets, anchor="## 7. Training the tiny DETR",
    recognised=("no-object class forgotten (0)", "-1 for unmatched", "labels not permuted by the match"),
)

ex5 = Exercise(
    name="ex5", title="mAP at two IoU thresholds", kind="experiment",
    prompt="""
    Run the cell: it evaluates the shipped tiny DETR on held-out synthetic shapes at IoU thresholds 0.5 and
    0.75. Which statement is right?

    - **A** mAP@0.75 is lower: a detection must overlap its object more tightly to count, and many of the
      model's boxes are off by a few pixels.
    - **B** mAP@0.75 is higher: a stricter threshold removes false positives.
    - **C** They are equal: the threshold only changes which boxes are drawn.
    - **D** mAP@0.75 is higher because more detections count as correct at 0.75.
    """,
    starter="""
    import minivit
    import minivit.data.shapes
    import minivit.detection
    from minivit.exercises.ch6 import ex5


    def measure_map_thresholds():
        model, info = minivit.detection.load_tiny_detr()
        held_out = minivit.data.shapes.make_shapes(minivit.by_profile(smoke=32, cpu=300, gpu=500), seed=123,
                                                   image_size=info["image_size"])
        for iou in (0.5, 0.75):
            score = minivit.detection.evaluate_map(model, held_out.images, held_out.targets, iou)
            print(f"mAP@{iou}: {score:.3f} on {len(held_out)} held-out images")


    measure_map_thresholds()

    answer = ...  # 'A', 'B', 'C' or 'D'
    ex5.check(answer)
    # ex5.hint()
    # ex5.solution()
    """,
    answer_name="answer",
    solution_code="answer = 'A'  # e.g. 0.77 against 0.55: a box must match its object more closely to count\n",
    hints=("At IoU threshold t, a detection is a true positive only if it overlaps a same-class object by at "
           "least t. Does raising t make that easier or harder?",
           "Every detection correct at 0.75 is also correct at 0.5, not the other way round."),
    checker=letter_checker("A", {
        "B": "false positives are detections that do not match; a stricter threshold makes more of them, not fewer",
        "C": "the printed numbers differ: the threshold decides which detections count as correct",
        "D": "a detection correct at 0.75 is also correct at 0.5; the set of correct ones shrinks as t grows",
    }),
    anchor="## 9. Which query",
    recognised=("B: fewer false positives", "C: equal", "D: more correct at 0.75"),
)

EXERCISES = [ex1, ex2, ex3, ex4, ex5]
