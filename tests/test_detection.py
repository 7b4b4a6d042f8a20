import math

import pytest
import torch

from minivit.data.shapes import make_shapes
from minivit.detection import (
    TINY_DETR_CHECKPOINT,
    average_precision,
    average_precision_per_class,
    detect,
    evaluate_map,
    load_tiny_detr,
    mean_average_precision,
    save_tiny_detr,
    targets_to_pixels,
    train_detr,
)
from minivit.detr import build_tiny_detr


def hand_worked_example():
    """Two images, xyxy pixels. Worked out by hand (see the comments):

    class 0, 3 objects: detections by score: .9 TP (a1, IoU 1), .8 FP (a1 again, IoU .82:
    a duplicate), .7 TP (c, IoU 1), .6 FP (nothing there); a2 is never found.
    precision 1, 1/2, 2/3, 1/2 at recall 1/3, 1/3, 2/3, 2/3
    -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    class 1, 1 object: .95 has IoU 0.4 (FP at 0.5), .3 has IoU 0.625 (TP) -> precision 1/2 at
    recall 1 -> AP = 1/2. At IoU threshold 0.3 the .95 detection is the TP -> AP = 1.
    class 2: detected but absent from the targets -> not counted.
    mAP@0.5 = (5/9 + 1/2) / 2 = 19/36; mAP@0.3 = (5/9 + 1) / 2 = 7/9.
    """
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
         "labels": torch.tensor([0, 0, 1])},
        {"boxes": torch.tensor([[5.0, 5, 15, 15]]), "labels": torch.tensor([0])},
    ]
    predictions = [
        {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [60, 60, 70, 70], [40, 40, 50, 44],
                                [40, 40, 50, 56]]),
         "scores": torch.tensor([0.9, 0.8, 0.6, 0.95, 0.3]), "labels": torch.tensor([0, 0, 0, 1, 1])},
        {"boxes": torch.tensor([[5.0, 5, 15, 15], [0, 0, 5, 5]]),
         "scores": torch.tensor([0.7, 0.99]), "labels": torch.tensor([0, 2])},
    ]
    return predictions, targets


def test_map_on_the_hand_worked_example():
    predictions, targets = hand_worked_example()
    per_class = average_precision_per_class(predictions, targets, 0.5)
    assert per_class == pytest.approx({0: 5 / 9, 1: 1 / 2})
    assert mean_average_precision(predictions, targets, 0.5) == pytest.approx(19 / 36)
    assert mean_average_precision(predictions, targets, 0.3) == pytest.approx(7 / 9)


def test_average_precision_edge_cases():
    assert average_precision([0.9, 0.8], [True, True], 2) == pytest.approx(1.0)
    assert average_precision([], [], 3) == 0.0
    assert average_precision([0.5, 0.9], [True, False], 1) == pytest.approx(0.5)  # sorted by score first
    assert math.isnan(average_precision([0.5], [False], 0))


def test_perfect_predictions_score_one_and_bad_input_is_named():
    _, targets = hand_worked_example()
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    assert mean_average_precision(perfect, targets) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="lacks"):
        mean_average_precision([{"boxes": torch.zeros(0, 4)}] * 2, targets)
    with pytest.raises(ValueError, match="for 1 images but targets for 2"):
        mean_average_precision(perfect[:1], targets)
    bad = [dict(p) for p in perfect]
    bad[1]["boxes"] = torch.tensor([[5.0, 5, 1, 15]])
    with pytest.raises(ValueError, match=r"predictions\[1\]\['boxes'\]\[0\]"):
        mean_average_precision(bad, targets)
    with pytest.raises(ValueError, match="no objects"):
        mean_average_precision([perfect[0]], [{"boxes": torch.zeros(0, 4),
                                               "labels": torch.zeros(0, dtype=torch.int64)}])


def test_training_runs_with_empty_images_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    data = make_shapes(8, 32, seed=0, min_objects=0, max_objects=2)
    data.targets[0] = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    config = {"num_classes": 3, "num_queries": 4, "hidden_dim": 32, "num_heads": 2, "dim_feedforward": 64,
              "backbone_widths": (8, 16)}
    model = build_tiny_detr(**config)
    seen = []
    history = train_detr(model, data.images, data.targets, steps=3, batch_size=4, progress=False,
                         callback=lambda step, m: seen.append(step), callback_every=2)
    assert seen == [0, 2, 3] and len(history) == 3
    assert all(math.isfinite(h["loss"]) for h in history) and not model.training
    score = evaluate_map(model, data.images, data.targets)
    assert 0.0 <= score <= 1.0
    path = tmp_path / "tiny.pt"
    save_tiny_detr(model, path, config, data.classes, image_size=32, metrics={"map50": score})
    loaded, info = load_tiny_detr(path)
    assert info["classes"] == list(data.classes) and info["metrics"]["map50"] == score
    torch.testing.assert_close(loaded(data.images)["pred_boxes"], model(data.images)["pred_boxes"])
    with pytest.raises(FileNotFoundError, match="notebooks/06"):
        load_tiny_detr(tmp_path / "missing.pt")


def test_targets_to_pixels():
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.25, 0.5, 0.5]])}]
    torch.testing.assert_close(targets_to_pixels(targets, (32, 64))[0]["boxes"], torch.tensor([[16.0, 0, 48, 16]]))


@pytest.mark.skipif(not TINY_DETR_CHECKPOINT.is_file(), reason="the shipped checkpoint is made by notebook 06")
def test_shipped_checkpoint_detects_shapes():
    model, info = load_tiny_detr()
    assert info["metrics"]["map50"] >= 0.5
    data = make_shapes(64, info["image_size"], seed=12345)
    assert evaluate_map(model, data.images, data.targets) >= 0.4
    assert len(detect(model, data.images[:2], threshold=0.5)) == 2
