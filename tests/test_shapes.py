import pytest
import torch

from minivit.boxes import box_cxcywh_to_xyxy
from minivit.data.shapes import SHAPE_CLASSES, ShapesSet, collate_detection, make_shapes


def test_same_seed_same_images_other_seed_other_images():
    first, second, other = make_shapes(20, 32, seed=7), make_shapes(20, 32, seed=7), make_shapes(20, 32, seed=8)
    assert torch.equal(first.images, second.images)
    for a, b in zip(first.targets, second.targets):
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["boxes"], b["boxes"])
    assert not torch.equal(first.images, other.images)


def test_shapes_and_ranges():
    data = make_shapes(30, 48, seed=0, min_objects=0, max_objects=4)
    assert isinstance(data, ShapesSet) and len(data) == 30 and data.classes == SHAPE_CLASSES
    assert data.images.shape == (30, 3, 48, 48) and data.images.dtype == torch.float32
    assert 0 <= data.images.min() and data.images.max() <= 1
    counts = [len(t["labels"]) for t in data.targets]
    assert min(counts) == 0 and max(counts) <= 4, "empty images occur with min_objects=0"
    for target in data.targets:
        assert target["labels"].dtype == torch.int64 and target["boxes"].shape == (len(target["labels"]), 4)
        xyxy = box_cxcywh_to_xyxy(target["boxes"])
        assert (xyxy >= 0).all() and (xyxy <= 1).all()
        assert set(target["labels"].tolist()) <= {0, 1, 2}
    assert len(set(torch.cat([t["labels"] for t in data.targets]).tolist())) == 3, "all three classes occur"
    image, target = data[3]
    assert image.shape == (3, 48, 48) and target is data.targets[3]
    assert len(data[:5]) == 5


def test_boxes_are_tight_around_the_drawn_shape():
    data = make_shapes(10, 40, seed=3, min_objects=1, max_objects=1, noise=0.0)
    for image, target in zip(data.images, data.targets):
        corners = image[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # (3, 4): one shape covers at most one corner
        background = corners.median(dim=1).values  # (3,)
        drawn = (image != background[:, None, None]).any(0)  # (S, S)
        rows, cols = drawn.any(1).nonzero()[:, 0], drawn.any(0).nonzero()[:, 0]
        expected = torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32) / 40
        torch.testing.assert_close(box_cxcywh_to_xyxy(target["boxes"]), expected)


def test_uint8_and_collate():
    data = make_shapes(4, 32, seed=1, dtype="uint8")
    assert data.images.dtype == torch.uint8
    images, targets = collate_detection([data[i] for i in range(4)])
    assert images.shape == (4, 3, 32, 32) and len(targets) == 4
    loader = torch.utils.data.DataLoader(data, batch_size=2, collate_fn=collate_detection)
    images, targets = next(iter(loader))
    assert images.shape == (2, 3, 32, 32) and targets[1] is data.targets[1]
    with pytest.raises(ValueError, match="empty batch"):
        collate_detection([])


@pytest.mark.parametrize("kwargs,message", [
    ({"min_objects": 3, "max_objects": 2}, "min_objects"),
    ({"min_size": 0.0}, "min_size"),
    ({"max_size": 1.5}, "min_size"),
    ({"dtype": "int16"}, "dtype"),
    ({"image_size": 4}, "image_size"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_shapes(2, **{"image_size": 32, **kwargs})


def test_colors_name_the_colour_drawn():
    from minivit.data.shapes import COLOR_NAMES, COLORS

    data = make_shapes(20, image_size=32, seed=4, min_objects=1, max_objects=1, record_colors=True)
    plain = make_shapes(20, image_size=32, seed=4, min_objects=1, max_objects=1)
    assert torch.equal(plain.images, data.images) and set(plain.targets[0]) == {"labels", "boxes"}
    for image, target in zip(data.images, data.targets):
        (color,) = target["colors"].tolist()
        cx, cy = (target["boxes"][0, :2] * 32).long().tolist()  # the box centre lies inside every shape
        torch.testing.assert_close(image[:, cy, cx], torch.tensor(COLORS[COLOR_NAMES[color]]))
