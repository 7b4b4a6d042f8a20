import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from minivit.data.shapes import make_shapes
from minivit.detection import (
    TINY_DETR_CHECKPOINT,
    apply_nms,
    average_precision,
    average_precision_per_class,
    detect,
    duplicate_mask,
    duplicate_rate,
    evaluate_decoder_layers,
    evaluate_map,
    load_tiny_detr,
    lr_scheduler,
    mean_average_precision,
    predict,
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


# ----------------------------------------------------------------------------- duplicates, NMS, decoder layers


def detections(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_duplicate_rate_on_hand_made_boxes():
    image = detections(
        [[0, 0, 10, 10], [0, 0, 10, 9],  # IoU 0.9 with the better one, same class: a duplicate
         [0, 0, 10, 10],  # same box, another class: not a duplicate
         [20, 20, 30, 30], [20, 20, 30, 26],  # IoU 0.6: not above 0.7
         [0, 0, 10, 10]],  # a duplicate, but below the score threshold: ignored
        [0.9, 0.8, 0.85, 0.7, 0.6, 0.2], [0, 0, 1, 2, 2, 0])
    assert duplicate_rate([image], score_threshold=0.5) == pytest.approx(1 / 5)
    assert duplicate_rate([image], iou_threshold=0.5, score_threshold=0.5) == pytest.approx(2 / 5)
    assert duplicate_rate([image]) == pytest.approx(2 / 6)  # the low-scored copy counts at threshold 0
    assert duplicate_mask(image).tolist() == [False, True, False, False, False, True]
    other_image = detections([[0, 0, 10, 9]], [0.8], [0])  # the same box in another image: no duplicate
    assert duplicate_rate([image, other_image], score_threshold=0.5) == pytest.approx(1 / 6)
    assert math.isnan(duplicate_rate([detections([[0, 0, 1, 1]], [0.1], [0])], score_threshold=0.5))
    with pytest.raises(ValueError, match="iou_threshold"):
        duplicate_rate([image], iou_threshold=1.5)
    with pytest.raises(ValueError, match="lacks"):
        duplicate_rate([{"boxes": torch.zeros(0, 4)}])


def test_apply_nms_removes_a_planted_duplicate_only():
    image = detections([[0, 0, 10, 10], [0, 0, 10, 9], [0, 0, 10, 10], [20, 20, 30, 30]],
                       [0.8, 0.9, 0.7, 0.6], [0, 0, 1, 0])
    (kept,) = apply_nms([image], iou_threshold=0.7)
    assert kept["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])  # the 0.8 copy of the 0.9 box is gone
    assert kept["labels"].tolist() == [0, 1, 0]
    assert duplicate_rate([image]) > 0 and duplicate_rate([kept]) == 0
    (loose,) = apply_nms([image], iou_threshold=0.95)  # IoU 0.9 is not above 0.95: nothing removed
    assert len(loose["scores"]) == 4
    with pytest.raises(ValueError, match="iou_threshold"):
        apply_nms([image], iou_threshold=0.0)


class PlantedDETR(nn.Module):
    """Returns fixed predictions for two 64-px images: layer 1 (aux) finds the object twice, layer 2 once."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # predict() asks for the model's device
        confident = torch.tensor([-5.0, 5.0, -5.0, -5.0])  # class 1
        nothing = torch.tensor([-5.0, -5.0, -5.0, 5.0])  # "no object"
        box = torch.tensor([0.5, 0.5, 0.25, 0.25])  # cxcywh: pixels 24..40
        taller = box + torch.tensor([0.0, 0.0, 0.0, 0.01])  # IoU 0.96 with box
        self.layer_logits = [torch.stack([confident, confident * 0.9, nothing]),
                             torch.stack([confident, nothing, nothing])]
        self.layer_boxes = [torch.stack([box, taller, box]), torch.stack([box] * 3)]

    def forward(self, images):
        batch = images.shape[0]
        layers = [{"pred_logits": logits.expand(batch, -1, -1), "pred_boxes": boxes.expand(batch, -1, -1)}
                  for logits, boxes in zip(self.layer_logits, self.layer_boxes)]
        return {**layers[-1], "aux_outputs": layers[:-1]}


def test_detect_with_nms_and_per_layer_evaluation_on_planted_outputs():
    model, images = PlantedDETR(), torch.zeros(2, 3, 64, 64)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.25, 0.25]])}] * 2
    outputs = predict(model, images)
    assert len(outputs["aux_outputs"]) == 1 and outputs["pred_logits"].shape == (2, 3, 4)
    assert [len(d["scores"]) for d in detect(model, images, layer=0)] == [2, 2]  # the planted duplicate
    assert [len(d["scores"]) for d in detect(model, images, layer=0, nms_iou=0.7)] == [1, 1]
    assert [len(d["scores"]) for d in detect(model, images)] == [1, 1]  # the last layer: no duplicate
    with pytest.raises(ValueError, match="layer must be in"):
        detect(model, images, layer=2)
    plain = evaluate_decoder_layers(model, images, targets)
    with_nms = evaluate_decoder_layers(model, images, targets, nms_iou=0.7)
    assert len(plain) == len(with_nms) == 2  # one entry per decoder layer
    assert plain[0]["duplicate_rate"] == pytest.approx(0.5) and plain[0]["detections_per_image"] == 2
    assert plain[0]["map50"] == pytest.approx(1.0)  # the duplicate ranks below the hit: AP unchanged
    assert with_nms[0]["duplicate_rate"] == 0 and with_nms[0]["detections_per_image"] == 1
    assert plain[1] == with_nms[1] == {"map50": pytest.approx(1.0), "map75": pytest.approx(1.0),
                                       "duplicate_rate": 0.0, "detections_per_image": 1.0}


def test_per_layer_evaluation_of_a_real_model_returns_one_entry_per_decoder_layer():
    torch.manual_seed(0)
    data = make_shapes(6, 32, seed=0)
    model = build_tiny_detr(num_queries=4, num_decoder_layers=3, hidden_dim=32, num_heads=2, backbone_widths=(8, 16))
    layers = evaluate_decoder_layers(model, data.images, data.targets)
    assert len(layers) == 3
    assert layers[-1]["map50"] == pytest.approx(evaluate_map(model, data.images, data.targets))
    assert all(0 <= row["map50"] <= 1 and 0 <= row["map75"] <= row["map50"] + 1e-9 for row in layers)


def test_lr_schedules():
    def rates(**kwargs):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = lr_scheduler(optimizer, 100, **kwargs)
        values = []
        for _ in range(100):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values

    step = rates()
    assert step[74] == 1.0 and step[75] == pytest.approx(0.1) and step[-1] == pytest.approx(0.1)
    assert rates(warmup_steps=0, schedule="step", lr_drop=0.5)[50] == pytest.approx(0.1)
    warm = rates(schedule="cosine", warmup_steps=10)
    assert warm[0] == pytest.approx(0.1) and warm[9] == pytest.approx(1.0) and warm[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(warm[10:], warm[11:])) and warm[-1] < 0.001
    assert rates(schedule="step", warmup_steps=4)[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    data = make_shapes(4, 32, seed=0)
    with pytest.raises(ValueError, match="schedule"):
        train_detr(build_tiny_detr(), data.images, data.targets, steps=2, schedule="linear", progress=False)
    with pytest.raises(ValueError, match="warmup_steps"):
        train_detr(build_tiny_detr(), data.images, data.targets, steps=2, warmup_steps=2, progress=False)


# ----------------------------------------------------------------------------- the ablation experiment


def test_ablation_runs_resumes_and_summarizes(tmp_path, monkeypatch):
    from minivit.experiments import detr_ablation

    output = tmp_path / "ablation.json"
    settings = {"num_train": 16, "num_val": 8, "batch_size": 4}
    results = detr_ablation.run_ablation(("all", "none"), seeds=(0,), steps=2, output=output, **settings)
    assert [(run["placement"], run["seed"]) for run in results["runs"]] == [("all", 0), ("none", 0)]
    stored = json.loads(output.read_text())
    assert stored["paper_table3_ap"]["all"] == 40.6 and len(stored["runs"]) == 2
    assert len(stored["runs"][0]["layers"]["nms"]) == 2  # the tiny DETR's two decoder layers
    trained = []
    monkeypatch.setattr(detr_ablation, "run_one", lambda placement, seed, steps, **kw: trained.append(placement) or {
        "placement": placement, "seed": seed, "steps": steps, **kw, "map50": 0.5, "map75": 0.2,
        "duplicate_rate": 0.0, "minutes": 0.0})
    detr_ablation.run_ablation(("all", "none", "input"), seeds=(0,), steps=2, output=output, **settings)
    assert trained == ["input"]  # the two finished runs are kept, not trained again


def test_ablation_summaries_are_mean_and_sample_std():
    from minivit.experiments.detr_ablation import mean_std, summarize_layers, summarize_placements

    def run(placement, seed, value):
        layer = {"map50": value, "map75": value / 2, "duplicate_rate": float("nan")}
        return {"placement": placement, "seed": seed, "map50": value, "map75": value / 2, "duplicate_rate": 0.1,
                "layers": {"no_nms": [layer, layer], "nms": [layer, {**layer, "map50": 1.0}]}}

    results = {"paper_table3_ap": {"all": 40.6, "none": 32.8, "input": 39.2},
               "runs": [run("all", s, v) for s, v in enumerate((0.6, 0.7, 0.8))] + [run("none", 0, 0.3)]}
    rows = summarize_placements(results)
    assert [row["placement"] for row in rows] == ["all", "none"]  # no "input" runs: no row
    assert rows[0]["map50"] == pytest.approx((0.7, 0.1)) and rows[0]["seeds"] == 3
    assert rows[1]["map50"] == (0.3, 0.0) and rows[1]["paper_ap"] == 32.8
    layers = summarize_layers(results, "all")
    assert len(layers) == 2 and layers[1]["map50_nms"] == (1.0, 0.0)
    assert layers[0]["map75_no_nms"] == pytest.approx((0.35, 0.05))
    assert math.isnan(layers[0]["duplicate_rate_no_nms"][0])  # NaN (nothing confident) is left out
    assert mean_std([1.0, float("nan"), 3.0]) == pytest.approx((2.0, 2 ** 0.5, 2))
    with pytest.raises(ValueError, match="no runs with placement 'decoder'"):
        summarize_layers(results, "decoder")


def test_ablation_results_load_and_format(tmp_path, capsys):
    from minivit.experiments.detr_ablation import (
        DEFAULT_OUTPUT,
        format_layer_table,
        format_placement_table,
        load_results,
        summarize_layers,
    )

    assert load_results(tmp_path / "missing.json") is None
    assert "No ablation results at missing.json" in capsys.readouterr().out
    layer = {"map50": 0.5, "map75": 0.25, "duplicate_rate": 0.125}
    results = {"paper_table3_ap": {"all": 40.6, "none": 32.8},
               "runs": [{"placement": "all", "seed": 0, "map50": 0.9, "map75": 0.7, "duplicate_rate": 0.2,
                         "layers": {"no_nms": [layer], "nms": [{**layer, "duplicate_rate": 0.0}]}}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert load_results(path) == results
    table = format_placement_table(results).splitlines()
    assert len(table) == 2 and table[1].split()[:3] == ["all", "40.6", "1"] and "0.900 ± 0.000" in table[1]
    layers = format_layer_table(summarize_layers(results)).splitlines()
    assert layers[1].split()[0] == "1" and "0.125 ± 0.000" in layers[1] and "0.000 ± 0.000" in layers[1]
    committed = Path(__file__).resolve().parent.parent / DEFAULT_OUTPUT
    if committed.is_file():  # in a checkout, the default is the committed file
        assert load_results() == json.loads(committed.read_text())
