"""``python -m minivit.evaluate``: re-measures a classifier checkpoint's test accuracy, with clear errors."""
import re
from pathlib import Path

import pytest
import torch

from minivit.data import CIFAR10_CLASSES, channel_stats, load_cifar10
from minivit.detr import build_tiny_detr
from minivit.evaluate import main, views_of
from minivit.train import save_checkpoint
from minivit.train.evaluate import evaluate
from minivit.vit import ViT
from tests.test_data import make_image_folder


@pytest.fixture()
def data_root(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "cifar10" / "test", CIFAR10_CLASSES, per_class=3, size=32)
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path))
    return tmp_path


def small_vit_checkpoint(path, views=(True, 0)):
    torch.manual_seed(0)
    model = ViT(image_size=32, patch_size=8, dim=16, depth=1, num_heads=2, mlp_dim=32)
    mean, std = channel_stats(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    meta = {"normalization": {"mean": mean.tolist(), "std": std.tolist()}, "test_acc": 0.5,
            "train_config": {"tta_flip": views[0], "tta_shift": views[1]}}
    return save_checkpoint(path, model, meta=meta), model, mean, std


def test_reports_the_accuracy_evaluate_measures_and_the_recorded_one(data_root, tmp_path, capsys):
    path, model, mean, std = small_vit_checkpoint(tmp_path / "vit.pt")
    accuracy = main([str(path), "--views", "1", "--device", "cpu"])
    _, expected = evaluate(model.eval(), load_cifar10("test"), mean, std)
    assert accuracy == pytest.approx(expected)
    out = capsys.readouterr().out
    assert f"test accuracy {expected:.2%} on 30 images, 1 view(s) each, on cpu" in out
    assert "the checkpoint records 50.00% (its run's own test, 2 view(s))" in out
    assert main([str(path), "--limit", "10", "--device", "cpu"]) is not None  # the run's own 2 views
    assert "on 10 images, 2 view(s)" in capsys.readouterr().out


def test_views_follow_the_runs_recipe():
    assert views_of({}) == 1
    assert views_of({"train_config": {"tta_flip": True, "tta_shift": 0}}) == 2
    assert views_of({"train_config": {"tta_flip": True, "tta_shift": 1}}) == 10


@pytest.mark.parametrize("kind, message", [
    ("missing", r"argument checkpoint: no checkpoint at .*nothing\.pt"),
    ("detr", r"argument checkpoint: .*detr\.pt holds a detr model, not a CIFAR-10 classifier"),
    ("no-normalization", r"argument checkpoint: the checkpoint records no normalization 'mean'"),
    ("text", r"argument checkpoint: .*text\.pt is not a checkpoint torch can read safely"),
])
def test_bad_checkpoints_are_argument_errors(kind, message, data_root, tmp_path, capsys):
    path = tmp_path / {"missing": "nothing.pt", "detr": "detr.pt", "no-normalization": "plain.pt",
                       "text": "text.pt"}[kind]
    if kind == "detr":
        save_checkpoint(path, build_tiny_detr())
    elif kind == "no-normalization":
        save_checkpoint(path, ViT(image_size=32, patch_size=8, dim=16, depth=1, num_heads=2, mlp_dim=32))
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    with pytest.raises(SystemExit) as caught:
        main([str(path), "--device", "cpu"])
    assert caught.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_limit_below_one_is_an_argument_error(capsys):
    with pytest.raises(SystemExit):
        main(["--limit", "0"])
    assert "argument --limit: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_a_shipped_vits_name_selects_its_file_unless_a_file_of_that_name_exists(tmp_path, monkeypatch):
    from minivit.evaluate import checkpoint_path
    from minivit.train.checkpoint import SHIPPED_CIFAR_VITS

    assert checkpoint_path(None) == SHIPPED_CIFAR_VITS["small"]
    assert checkpoint_path("analysis") == SHIPPED_CIFAR_VITS["analysis"]
    assert checkpoint_path("runs/x/last.pt") == Path("runs/x/last.pt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "analysis").write_bytes(b"")
    assert checkpoint_path("analysis") == Path("analysis")  # a file in the working folder wins
