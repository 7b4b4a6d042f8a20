import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from minivit.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from minivit.matching import (
    HungarianMatcher,
    SetCriterion,
    brute_force_assignment,
    hungarian,
    matching_cost,
    matching_cost_terms,
)


def random_cost(rng, rows, cols, kind):
    if kind == "float":
        return rng.normal(size=(rows, cols))
    if kind == "int":  # many ties
        return rng.integers(0, 5, size=(rows, cols)).astype(float)
    if kind == "negative_int":
        return rng.integers(-100, 100, size=(rows, cols)).astype(float)
    return np.full((rows, cols), 3.0)  # every assignment is optimal


def assert_valid_assignment(rows, cols, shape):
    assert len(rows) == len(cols) == min(shape)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert np.all(np.diff(rows) > 0), "rows are sorted, like scipy's"
    assert rows.min(initial=0) >= 0 and cols.min(initial=0) >= 0
    assert rows.max(initial=-1) < shape[0] and cols.max(initial=-1) < shape[1]


def test_hungarian_equals_scipy_on_1200_random_rectangular_matrices():
    rng = np.random.default_rng(0)
    kinds = ["float", "int", "negative_int", "constant"]
    for trial in range(1200):
        rows, cols = rng.integers(1, 16, size=2)
        if trial % 2:  # both orientations, also strongly rectangular
            rows, cols = cols, rows
        cost = random_cost(rng, rows, cols, kinds[trial % len(kinds)])
        got_rows, got_cols = hungarian(cost)
        assert_valid_assignment(got_rows, got_cols, cost.shape)
        ref_rows, ref_cols = linear_sum_assignment(cost)
        assert cost[got_rows, got_cols].sum() == pytest.approx(cost[ref_rows, ref_cols].sum(), abs=1e-9), cost


@pytest.mark.parametrize("shape", [(100, 20), (20, 100), (60, 60)])
def test_hungarian_equals_scipy_on_detr_sized_matrices(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.random(shape)
        rows, cols = hungarian(cost)
        assert_valid_assignment(rows, cols, shape)
        ref = linear_sum_assignment(cost)
        assert cost[rows, cols].sum() == pytest.approx(cost[ref].sum())


def test_hungarian_equals_brute_force_on_small_matrices():
    rng = np.random.default_rng(1)
    for trial in range(200):
        rows, cols = rng.integers(1, 7, size=2)
        cost = random_cost(rng, rows, cols, ["float", "int"][trial % 2])
        got = cost[hungarian(cost)].sum()
        brute_rows, brute_cols = brute_force_assignment(cost)
        assert_valid_assignment(brute_rows, brute_cols, cost.shape)
        assert got == pytest.approx(cost[brute_rows, brute_cols].sum())


def test_hungarian_hand_worked_example():
    cost = np.array([[4, 1, 3], [2, 0, 5], [3, 2, 2]])  # the scipy docs example: total 5
    rows, cols = hungarian(cost)
    np.testing.assert_array_equal(rows, [0, 1, 2])
    np.testing.assert_array_equal(cols, [1, 0, 2])


def test_hungarian_accepts_tensors_and_empty_matrices():
    rows, cols = hungarian(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_array_equal(cols, [1, 0])
    for shape in [(0, 5), (5, 0), (0, 0)]:
        rows, cols = hungarian(np.zeros(shape))
        assert len(rows) == len(cols) == 0


def test_hungarian_step_recorder():
    cost = np.array([[4.0, 1, 3], [2, 0, 5], [3, 2, 2], [1, 1, 1]])  # 4 x 3: solved as its transpose
    steps = []
    rows, cols = hungarian(cost, record=steps)
    assert steps[0]["step"].startswith("init") and steps[-1]["step"].startswith("augment")
    for step in steps:
        assert step["reduced"].shape == cost.shape
        assert (step["reduced"] >= -1e-12).all(), "potentials keep every reduced cost >= 0"
        step_rows, step_cols = step["assignment"]
        np.testing.assert_allclose(step["reduced"][step_rows, step_cols], 0.0, atol=1e-12)  # matched cells are tight
    final_rows, final_cols = steps[-1]["assignment"]
    np.testing.assert_array_equal(final_rows, rows)
    np.testing.assert_array_equal(final_cols, cols)
    assert cost[rows, cols].sum() == pytest.approx(cost[linear_sum_assignment(cost)].sum())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_hungarian_rejects_nan_and_inf(bad):
    cost = np.ones((3, 4))
    cost[1, 2] = bad
    with pytest.raises(ValueError, match=r"NaN/inf.*row 1, col 2"):
        hungarian(cost)
    with pytest.raises(ValueError, match="NaN/inf"):
        brute_force_assignment(cost)


def test_hungarian_rejects_wrong_dimensions():
    with pytest.raises(ValueError, match="2D"):
        hungarian(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="too slow"):
        brute_force_assignment(np.zeros((3, 9)))


# ----------------------------------------------------------------------------- the matcher


def random_batch(generator, batch=3, queries=10, classes=4, counts=(2, 0, 5)):
    outputs = {
        "pred_logits": torch.randn(batch, queries, classes + 1, generator=generator),
        "pred_boxes": torch.rand(batch, queries, 4, generator=generator) * 0.5 + 0.25,
    }
    targets = [
        {"labels": torch.randint(0, classes, (n,), generator=generator),
         "boxes": torch.rand(n, 4, generator=generator) * 0.5 + 0.25}
        for n in counts
    ]
    return outputs, targets


def test_cost_terms_by_hand():
    generator = torch.Generator().manual_seed(0)
    outputs, targets = random_batch(generator)
    logits, boxes, target = outputs["pred_logits"][0], outputs["pred_boxes"][0], targets[0]
    terms = matching_cost_terms(logits, boxes, target["labels"], target["boxes"])
    probs = logits.softmax(-1)
    expected = {name: torch.zeros(10, 2) for name in ("class", "bbox", "giou")}
    for q in range(10):
        for t in range(2):
            expected["class"][q, t] = -probs[q, target["labels"][t]]
            expected["bbox"][q, t] = (boxes[q] - target["boxes"][t]).abs().sum()
            pair = box_cxcywh_to_xyxy(boxes[q : q + 1]), box_cxcywh_to_xyxy(target["boxes"][t : t + 1])
            expected["giou"][q, t] = -generalized_box_iou(*pair)[0, 0]
    for name in expected:
        torch.testing.assert_close(terms[name], expected[name])
    total = matching_cost(logits, boxes, target["labels"], target["boxes"])
    torch.testing.assert_close(total, terms["class"] + 5 * terms["bbox"] + 2 * terms["giou"])


@pytest.mark.parametrize("solver", ["scipy", "minivit"])
def test_matcher_is_optimal_per_image_and_handles_empty_targets(solver):
    generator = torch.Generator().manual_seed(1)
    outputs, targets = random_batch(generator, counts=(2, 0, 5))
    indices = HungarianMatcher(solver=solver)(outputs, targets)
    assert len(indices) == 3
    assert len(indices[1][0]) == len(indices[1][1]) == 0
    for image, (queries, target_ids) in enumerate(indices):
        assert queries.dtype == target_ids.dtype == torch.int64
        assert len(queries) == len(targets[image]["labels"])
        if len(queries) == 0:
            continue
        cost = matching_cost(outputs["pred_logits"][image], outputs["pred_boxes"][image],
                             targets[image]["labels"], targets[image]["boxes"]).numpy()
        assert cost[queries, target_ids].sum() == pytest.approx(cost[linear_sum_assignment(cost)].sum(), rel=1e-5)


def test_matcher_finds_the_obvious_matching():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2], [0.5, 0.2, 0.3, 0.1]])
    logits = torch.full((1, 3, 3), -5.0)
    logits[0, [0, 1, 2], [1, 0, 2]] = 5.0  # query 0 says class 1, query 1 class 0, query 2 no-object
    outputs = {"pred_logits": logits, "pred_boxes": boxes[None]}
    targets = [{"labels": torch.tensor([0, 1]), "boxes": boxes[[1, 0]]}]  # target 0 = query 1, target 1 = query 0
    (queries, target_ids), = HungarianMatcher()(outputs, targets)
    assert dict(zip(queries.tolist(), target_ids.tolist())) == {0: 1, 1: 0}


def test_matcher_with_no_targets_at_all():
    generator = torch.Generator().manual_seed(2)
    outputs, targets = random_batch(generator, counts=(0, 0, 0))
    assert all(len(q) == 0 for q, _ in HungarianMatcher()(outputs, targets))


def test_matcher_rejects_too_many_targets_and_nan():
    generator = torch.Generator().manual_seed(3)
    outputs, targets = random_batch(generator, queries=4, counts=(2, 0, 5))
    with pytest.raises(ValueError, match=r"targets\[2\] has 5 objects but the model predicts only 4 queries"):
        HungarianMatcher()(outputs, targets)
    outputs, targets = random_batch(generator, counts=(2, 1, 3))
    outputs["pred_logits"][1, 4, 2] = float("nan")
    with pytest.raises(ValueError, match=r"image 1 has .*NaN/inf"):
        HungarianMatcher()(outputs, targets)
    outputs, targets = random_batch(generator, counts=(2, 1, 3))
    outputs["pred_boxes"][0, 3, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        HungarianMatcher()(outputs, targets)
    with pytest.raises(ValueError, match="2 target dicts for a batch of 3"):
        HungarianMatcher()(outputs, targets[:2])
    with pytest.raises(ValueError, match=r"targets\[0\].*'labels'"):
        HungarianMatcher()(outputs, [{"boxes": torch.zeros(0, 4)}] * 3)
    with pytest.raises(ValueError, match="solver"):
        HungarianMatcher(solver="greedy")


# ----------------------------------------------------------------------------- the criterion


def reference_losses(outputs, targets, indices, num_classes, eos_coef=0.1):
    """DETR's loss written per image with explicit loops (a second, independent version)."""
    weight = torch.ones(num_classes + 1)
    weight[-1] = eos_coef
    nll, total_weight, l1, giou_loss = 0.0, 0.0, 0.0, 0.0
    num_boxes = max(sum(len(t["labels"]) for t in targets), 1)
    for image, (queries, target_ids) in enumerate(indices):
        classes = torch.full((outputs["pred_logits"].shape[1],), num_classes)
        classes[queries] = targets[image]["labels"][target_ids]
        log_probs = outputs["pred_logits"][image].log_softmax(-1)
        for q, c in enumerate(classes.tolist()):
            nll += -weight[c] * log_probs[q, c]
            total_weight += weight[c]
        for q, t in zip(queries.tolist(), target_ids.tolist()):
            pred, true = outputs["pred_boxes"][image, q], targets[image]["boxes"][t]
            l1 += (pred - true).abs().sum()
            giou_loss += 1 - generalized_box_iou(box_cxcywh_to_xyxy(pred[None]), box_cxcywh_to_xyxy(true[None]))[0, 0]
    return {"loss_ce": nll / total_weight, "loss_bbox": l1 / num_boxes, "loss_giou": giou_loss / num_boxes}


def test_criterion_equals_reference_and_has_aux_losses():
    generator = torch.Generator().manual_seed(4)
    outputs, targets = random_batch(generator, counts=(2, 0, 5))
    aux, _ = random_batch(generator, counts=(2, 0, 5))
    outputs["aux_outputs"] = [aux]
    criterion = SetCriterion(num_classes=4)
    losses = criterion(outputs, targets)
    indices = criterion.matcher(outputs, targets)
    for name, value in reference_losses(outputs, targets, indices, 4).items():
        torch.testing.assert_close(losses[name], torch.as_tensor(value, dtype=torch.float32))
    aux_indices = criterion.matcher(aux, targets)
    for name, value in reference_losses(aux, targets, aux_indices, 4).items():
        torch.testing.assert_close(losses[name + "_0"], torch.as_tensor(value, dtype=torch.float32))
    expected = sum(w * (losses[k] + losses[k + "_0"]) for k, w in [("loss_ce", 1), ("loss_bbox", 5), ("loss_giou", 2)])
    torch.testing.assert_close(losses["loss"], expected)


def test_criterion_trains_with_an_image_without_objects():
    generator = torch.Generator().manual_seed(5)
    outputs, targets = random_batch(generator, counts=(0, 0, 0))
    logits = outputs["pred_logits"].requires_grad_()
    boxes = outputs["pred_boxes"].requires_grad_()
    losses = SetCriterion(num_classes=4)({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0
    losses["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(boxes.grad).all()


def test_criterion_rejects_wrong_number_of_classes():
    generator = torch.Generator().manual_seed(6)
    outputs, targets = random_batch(generator)
    with pytest.raises(ValueError, match="num_classes"):
        SetCriterion(num_classes=7)(outputs, targets)


def _one_bad_target(label=1, box=(0.5, 0.5, 0.2, 0.2)):
    """Three images; image 2's object 1 carries the given label and box, everything else is valid."""
    good = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.1]])
    targets = [{"labels": torch.tensor([0, 1]), "boxes": good.clone()},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
               {"labels": torch.tensor([2, label]), "boxes": torch.stack([good[0], torch.tensor(box)])}]
    generator = torch.Generator().manual_seed(8)
    outputs = {"pred_logits": torch.randn(3, 5, 5, generator=generator),
               "pred_boxes": torch.rand(3, 5, 4, generator=generator) * 0.5 + 0.25}
    return outputs, targets


@pytest.mark.parametrize("label, box, message", [
    (4, (0.5, 0.5, 0.2, 0.2), "'no object' index"),
    (7, (0.5, 0.5, 0.2, 0.2), "outside the classes 0..3"),
    (-1, (0.5, 0.5, 0.2, 0.2), "outside the classes 0..3"),
    (1, (120.0, 80.0, 40.0, 30.0), "not normalized.*pixels"),
    (1, (0.5, 0.5, -0.2, 0.2), "negative width"),
    (1, (0.5, float("nan"), 0.2, 0.2), "NaN"),
    (1, (0.5, 0.5, float("inf"), 0.2), "NaN or inf"),
])
def test_bad_detr_targets_are_refused_naming_image_and_box(label, box, message):
    """Issue 13, finding 8: these trained silently (or failed deep inside) before."""
    outputs, targets = _one_bad_target(label, box)
    outputs["aux_outputs"] = [{k: v.clone() for k, v in outputs.items()}]
    for call in (lambda: SetCriterion(num_classes=4)(outputs, targets), lambda: HungarianMatcher()(outputs, targets)):
        with pytest.raises(ValueError, match=rf"targets\[2\] object 1 .*{message}"):
            call()


def test_target_label_dtype_is_checked():
    outputs, targets = _one_bad_target()
    targets[0]["labels"] = targets[0]["labels"].float()
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\] must be an integer tensor"):
        SetCriterion(num_classes=4)(outputs, targets)


def test_set_criterion_host_syncs_one_for_the_targets_plus_one_per_decoder_layer():
    """Target checks happen once per call, with one host copy; the box helpers inside the loss do not sync.

    Before: 51 syncs for a 3-layer call (16 scalar reads per layer in box checks + 3 cost copies)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountScalarReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func._schema.name.split("::")[-1] in ("_local_scalar_dense", "nonzero", "masked_select"):
                CountScalarReads.count += 1
            return func(*args, **(kwargs or {}))

    outputs, targets = _one_bad_target()
    outputs["aux_outputs"] = [{k: v.clone() for k, v in outputs.items()} for _ in range(2)]
    copies = []
    original_cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):
        copies.append(1)
        return original_cpu(self, *args, **kwargs)

    criterion = SetCriterion(num_classes=4)
    torch.Tensor.cpu = counting_cpu
    try:
        with CountScalarReads():
            losses = criterion(outputs, targets)
    finally:
        torch.Tensor.cpu = original_cpu
    assert torch.isfinite(losses["loss"])
    assert CountScalarReads.count == 0
    assert len(copies) == 1 + 3  # the target check, then one cost matrix per decoder layer
