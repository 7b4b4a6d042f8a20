"""Issue 13, findings 12-16: bad values are stopped where they enter minivit, with a message that names the
argument or file and says what to do. Each test failed on the code before the fix (the docstrings say how)."""
import io
import re

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from minivit import viz
from minivit.attention import measure_attention_cost
from minivit.checks import check_finite_images, nonfinite_weights
from minivit.data import ImageSet, channel_stats, load_cifar10
from minivit.detection import mean_average_precision, predict, train_detr
from minivit.detr import build_tiny_detr, load_official_detr_state_dict, to_official_state_dict
from minivit.train.__main__ import main
from minivit.vit import vit_from_torchvision
from minivit.viz.widgets import image_from_bytes

TINY = dict(num_classes=3, num_queries=5, hidden_dim=32, num_heads=2, dim_feedforward=64,
            backbone_widths=(8, 16, 16, 16))


def tiny_detr():
    torch.manual_seed(0)
    return build_tiny_detr(**TINY)


def shapes_targets(count):
    return [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.25, 0.25]])} for _ in range(count)]


# --------------------------------------------------------------------------- finding 12: non-finite values
def test_one_nan_pixel_is_refused_before_it_reaches_batchnorm():
    """Before: train_detr took the batch, BatchNorm's running mean became NaN and every later image gave NaN
    (or the matcher failed deep inside, naming no image)."""
    model = tiny_detr()
    images = torch.rand(6, 3, 64, 64)
    images[4, 1, 10, 10] = float("nan")
    running = {name: buffer.clone() for name, buffer in model.named_buffers() if "running" in name}
    with pytest.raises(ValueError, match=r"images\[4\] contains NaN or inf pixels \(1 of 6 images"):
        train_detr(model, images, shapes_targets(6), steps=1, batch_size=2, progress=False, device="cpu")
    assert all(torch.equal(buffer, running[name]) for name, buffer in model.named_buffers() if name in running)
    with pytest.raises(ValueError, match=r"images\[4\] contains NaN"):
        predict(model, images)
    images[4] = 0.5
    assert torch.isfinite(predict(model, images)["pred_logits"]).all()


def test_nan_detection_scores_are_refused_by_the_metric():
    """Before: NaN scores were ranked anyway and gave a meaningless mAP (0.0 or 1.0 depending on order)."""
    target = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])}]
    for bad in (float("nan"), float("inf")):
        prediction = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 9.0, 9.0]]),
                       "scores": torch.tensor([0.9, bad]), "labels": torch.tensor([0, 0])}]
        with pytest.raises(ValueError, match=r"predictions\[0\]\['scores'\]\[1\] is (nan|inf): scores must be finite"):
            mean_average_precision(prediction, target)
    prediction[0]["scores"] = torch.tensor([0.9, 0.1])
    assert mean_average_precision(prediction, target) == 1.0


def test_nan_weights_from_torchvision_or_official_detr_are_refused():
    """Before: a state dict with NaN weights loaded without a word and every output was NaN."""
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                              mlp_dim=32, num_classes=10)
    assert vit_from_torchvision(tv) is not None  # finite weights load
    with torch.no_grad():
        tv.encoder.ln.weight[3] = float("nan")
    with pytest.raises(ValueError, match=r"torchvision state dict: 1 weight tensor\(s\) hold NaN or inf "
                                         r"\(encoder\.ln\.weight\); .*download them again"):
        vit_from_torchvision(tv)
    official = to_official_state_dict(tiny_detr())
    load_official_detr_state_dict(tiny_detr(), official)  # finite: loads
    name = next(key for key in official if key.startswith("transformer."))
    official[name] = official[name].clone().fill_(float("inf"))
    with pytest.raises(ValueError, match=rf"official DETR state dict: 1 weight tensor\(s\) .*\({re.escape(name)}\)"):
        load_official_detr_state_dict(tiny_detr(), official)


def test_nonfinite_weights_lists_only_the_bad_floating_tensors():
    weights = {"a": torch.zeros(3), "b": torch.tensor([1.0, float("-inf")]), "steps": torch.tensor(3),
               "c": torch.tensor([float("nan")], dtype=torch.float16)}
    assert nonfinite_weights(weights) == ["b", "c"]
    assert nonfinite_weights({"steps": torch.tensor([1, 2])}) == []
    check_finite_images(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))  # integers: nothing to check


def test_constant_or_empty_image_sets_have_no_statistics():
    """Before: an all-constant set gave std 0 (normalize then divided by zero: inf/NaN), an empty set NaN."""
    constant = torch.full((4, 3, 8, 8), 7, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"channel 0 of all 4 images has the one value 7 \(std 0\)"):
        channel_stats(constant)
    constant[:, 0] = torch.randint(0, 256, (4, 8, 8), dtype=torch.uint8)  # channel 0 varies, channel 1 does not
    with pytest.raises(ValueError, match="channel 1 of all 4 images"):
        channel_stats(constant)
    with pytest.raises(ValueError, match=r"images is empty \(shape \(0, 3, 8, 8\)\)"):
        channel_stats(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    mean, std = channel_stats(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    assert torch.isfinite(mean).all() and (std > 0).all()


# --------------------------------------------------------------------------- findings 13 and 14
@pytest.mark.parametrize("limit", [-5, 0, 2.5, True])
def test_a_limit_below_one_is_an_error_not_an_empty_set(limit, tmp_path):
    """Before: limit=-5 silently returned an empty data set (and every later statistic was NaN)."""
    with pytest.raises(ValueError, match=r"limit must be None \(all images\) or an integer >= 1"):
        load_cifar10("test", root=tmp_path, limit=limit)  # refused before the (missing) data is looked for
    data = ImageSet(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]), ("a", "b"))
    with pytest.raises(ValueError, match="count .* must be an integer >= 1"):
        data.subset(limit)
    assert len(data.subset(2)) == 2


def test_attention_cost_refuses_a_run_that_cannot_fit_before_allocating():
    """Before: measure_attention_cost(50_000, fused=False) allocated 10 GB at once (and then some)."""
    with pytest.raises(ValueError, match=r"fused=False over seq_len=50000 tokens would hold about 30\.0 GB"):
        measure_attention_cost(50_000, fused=False)
    with pytest.raises(ValueError, match="max_bytes=0.0 GB"):
        measure_attention_cost(64, fused=False, max_bytes=1e3)
    assert measure_attention_cost(64, fused=False, repeats=1).seconds > 0


# --------------------------------------------------------------------------- finding 15
def test_detr_explorer_threshold_out_of_range_is_an_error_not_a_clamp():
    """Before: threshold=1.5 was silently clamped to the slider's 0.95."""
    pytest.importorskip("ipywidgets")
    for bad in (1.5, 0.0, -0.1):
        with pytest.raises(ValueError, match=rf"threshold must be between 0.05 and 0.95 .*got {bad}"):
            viz.DETRAttentionExplorer(tiny_detr(), torch.rand(1, 3, 64, 64), ["a", "b", "c"], threshold=bad)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_16_bit_grayscale_uploads_are_scaled_not_clipped():
    """Before: convert('RGB') clipped a 16-bit PNG at 255, so every pixel above 255 (nearly all) became white."""
    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))  # (64, 64) left dark, right bright
    picture = image_from_bytes(png_bytes(gradient), 16)
    assert picture.shape == (3, 16, 16) and picture.dtype == torch.uint8
    assert torch.equal(picture[0], picture[1]) and torch.equal(picture[1], picture[2])  # gray
    row = picture[0, 8].float()
    assert row[0] < 20 and row[-1] > 235 and 100 < row[8] < 156  # the ramp survives, 0..255
    assert (row[1:] >= row[:-1]).all()
    eight_bit = image_from_bytes(png_bytes((gradient // 257).astype(np.uint8)), 16)
    assert (picture.int() - eight_bit.int()).abs().max() <= 1  # the same picture as its 8-bit copy


# --------------------------------------------------------------------------- finding 16 and the CLI
@pytest.mark.parametrize("argv, message", [
    (["--model", "{dim: 3}"], r"argument --model: not valid JSON \(Expecting property name .* at character 2"),
    (["--model", "[1, 2]"], r"argument --model: must be a JSON object of ViTConfig fields"),
    (["--progressive", "[[16, 0.5]"], r"argument --progressive: not valid JSON .*e\.g\. --progressive"),
    (["--progressive", "{}"], "argument --progressive: .*non-empty list"),
    (["--progressive", "[]"], "argument --progressive: .*non-empty list"),
    (["--train-limit", "50"], "argument --train-limit: 50 images are fewer than one batch of 100"),
])
def test_cli_argument_errors_name_the_flag_and_stop_before_loading_data(argv, message, tmp_path, capsys, monkeypatch):
    """Before: bare json errors ("invalid parse_progressive value"), {} taken as no schedule, and a limit below
    one batch failing with a traceback after CIFAR-10 was loaded."""
    monkeypatch.setattr("minivit.data.load_cifar10", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(SystemExit) as caught:
        main(["--profile", "smoke", "--out", str(tmp_path / "run"), *argv])
    assert caught.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_profile_gpu_without_a_gpu_warns_what_it_costs(tmp_path, capsys, monkeypatch):
    """Before: --profile gpu on a CPU-only machine started the GPU recipe silently."""
    monkeypatch.setattr("minivit.data.load_cifar10", lambda *a, **k: pytest.fail("stop here"))
    monkeypatch.setattr("minivit.train.__main__.get_device", lambda *a: torch.device("cpu"))
    with pytest.raises(pytest.fail.Exception, match="stop here"):
        main(["--profile", "gpu", "--out", str(tmp_path / "run")])
    assert re.search(r"warning: profile 'gpu' without a CUDA GPU runs on cpu: .* use --profile cpu",
                     capsys.readouterr().err)


def test_the_detr_loader_given_a_vit_checkpoint_says_so_before_building(tmp_path, monkeypatch):
    """Before: KeyError 'config' (an older loader), or a ViT built first and then refused."""
    from minivit.detection import load_tiny_detr
    from minivit.train import save_checkpoint
    from minivit.vit import ViT

    path = save_checkpoint(tmp_path / "vit.pt", ViT(image_size=16, patch_size=4, dim=16, depth=1, num_heads=2,
                                                    mlp_dim=32))
    monkeypatch.setattr("minivit.detection.load_checkpoint", lambda *a, **k: pytest.fail("built before the check"))
    with pytest.raises(ValueError, match=r"vit\.pt holds a vit model, not a DETR; give a checkpoint saved by "):
        load_tiny_detr(path)
