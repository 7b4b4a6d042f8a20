import pytest
import torch
from torchvision import ops

from minivit.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_xyxy_to_cxcywh,
    check_boxes,
    denormalize_boxes,
    generalized_box_iou,
    normalize_boxes,
)


def random_xyxy(count, seed, dtype=torch.float64, zero_width=False):
    """Random valid xyxy boxes in [0, 1] (some overlapping, some disjoint, optionally some of zero width)."""
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator, dtype=dtype)
    size = torch.rand(count, 2, generator=generator, dtype=dtype) * 0.5
    if zero_width:
        size[::7, 0] = 0.0
    return torch.cat([corner, corner + size], dim=1)


@pytest.mark.parametrize("seed", range(5))
def test_conversions_equal_torchvision_and_round_trip(seed):
    xyxy = random_xyxy(50, seed, zero_width=True)
    cxcywh = box_xyxy_to_cxcywh(xyxy)
    torch.testing.assert_close(cxcywh, ops.box_convert(xyxy, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), ops.box_convert(cxcywh, "cxcywh", "xyxy"))
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), xyxy)


def test_conversions_keep_leading_dimensions():
    boxes = random_xyxy(24, 0).view(2, 3, 4, 4)
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(boxes)), boxes)
    assert box_area(boxes).shape == (2, 3, 4)


@pytest.mark.parametrize("seed", range(5))
def test_area_iou_giou_equal_torchvision(seed):
    boxes1, boxes2 = random_xyxy(30, seed, zero_width=True), random_xyxy(17, seed + 100)
    torch.testing.assert_close(box_area(boxes1), ops.box_area(boxes1))
    iou, union = box_iou(boxes1, boxes2)
    assert iou.shape == union.shape == (30, 17)
    torch.testing.assert_close(iou, ops.box_iou(boxes1, boxes2))
    torch.testing.assert_close(union, box_area(boxes1)[:, None] + box_area(boxes2)[None] - iou * union)
    torch.testing.assert_close(generalized_box_iou(boxes1, boxes2), ops.generalized_box_iou(boxes1, boxes2))


def test_batched_iou_and_giou_equal_per_image():
    boxes1, boxes2 = random_xyxy(15, 3).view(3, 5, 4), random_xyxy(12, 4).view(3, 4, 4)
    iou, union = box_iou(boxes1, boxes2)
    giou = generalized_box_iou(boxes1, boxes2)
    assert iou.shape == union.shape == giou.shape == (3, 5, 4)
    for image in range(3):
        torch.testing.assert_close(iou[image], ops.box_iou(boxes1[image], boxes2[image]))
        torch.testing.assert_close(giou[image], ops.generalized_box_iou(boxes1[image], boxes2[image]))


def test_iou_hand_worked_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [3.0, 0.0, 4.0, 1.0]])
    iou, union = box_iou(a, b)
    torch.testing.assert_close(iou, torch.tensor([[1 / 7, 1.0, 0.0]]))
    torch.testing.assert_close(union, torch.tensor([[7.0, 4.0, 5.0]]))
    # enclosing boxes: 3x3 = 9, 2x2 = 4, 4x2 = 8  ->  GIoU = IoU - (C - U) / C
    torch.testing.assert_close(generalized_box_iou(a, b), torch.tensor([[1 / 7 - 2 / 9, 1.0, 0.0 - 3 / 8]]))


def test_iou_and_giou_are_differentiable():
    boxes1 = random_xyxy(4, 1).requires_grad_()
    generalized_box_iou(boxes1, random_xyxy(3, 2)).sum().backward()
    assert torch.isfinite(boxes1.grad).all()


def test_normalize_denormalize_round_trip():
    pixels = torch.tensor([[32.0, 16.0, 20.0, 8.0]])  # cxcywh on a 64 x 128 (H x W) image
    normalized = normalize_boxes(pixels, (64, 128))
    torch.testing.assert_close(normalized, torch.tensor([[0.25, 0.25, 0.15625, 0.125]]))
    torch.testing.assert_close(denormalize_boxes(normalized, (64, 128)), pixels)
    torch.testing.assert_close(denormalize_boxes(normalized, torch.tensor([64, 128])), pixels)


def test_empty_boxes():
    empty = torch.zeros(0, 4)
    assert box_iou(empty, random_xyxy(3, 0).float())[0].shape == (0, 3)
    assert generalized_box_iou(random_xyxy(2, 0).float(), empty).shape == (2, 0)
    assert box_xyxy_to_cxcywh(empty).shape == (0, 4)


def test_degenerate_box_names_the_box():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.2, 0.4, 0.9]])  # box 1: x2 < x1
    with pytest.raises(ValueError, match=r"boxes\[1\] = \[0\.5, 0\.2.*x2 < x1"):
        box_area(boxes)
    with pytest.raises(ValueError, match=r"boxes2\[1\]"):
        box_iou(boxes[:1], boxes)
    with pytest.raises(ValueError, match=r"boxes1\[1\]"):
        generalized_box_iou(boxes, boxes[:1])
    with pytest.raises(ValueError, match=r"boxes\[0\].*negative width"):
        box_cxcywh_to_xyxy(torch.tensor([[0.5, 0.5, 0.1, -0.2]]))
    with pytest.raises(ValueError, match=r"boxes\[1, 0\]"):
        box_area(torch.tensor([[[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.5, 1.0, 0.4]]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_inf_name_the_box(bad):
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.1, bad, 0.3, 0.4]])
    with pytest.raises(ValueError, match=r"boxes\[2\].*NaN or inf"):
        box_xyxy_to_cxcywh(boxes)
    with pytest.raises(ValueError, match=r"boxes\[2\].*NaN or inf"):
        normalize_boxes(boxes, (32, 32))


def test_wrong_shapes():
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\).*\(3, 5\)"):
        box_area(torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        box_cxcywh_to_xyxy(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"same leading \(batch\) dimensions"):
        box_iou(torch.zeros(2, 3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_iou(torch.zeros(4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="torch.Tensor"):
        check_boxes([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="unknown box format"):
        check_boxes(torch.zeros(1, 4), "xywh")
    with pytest.raises(ValueError, match="image_size"):
        normalize_boxes(torch.zeros(1, 4), (0, 10))
