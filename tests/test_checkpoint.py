"""The one checkpoint format: round trips of every architecture, validation before building,
no NaN written, the older formats (DeprecationWarning) and the shipped checkpoints."""
import json
import time
import warnings

import pytest
import torch

from minivit.conv import SmallCNN
from minivit.data import ImageSet
from minivit.data.augment import Augment
from minivit.detection import TINY_DETR_CHECKPOINT, load_tiny_detr, save_tiny_detr
from minivit.detr import DETRConfig, build_tiny_detr
from minivit.runtime import seed_everything
from minivit.testing import assert_state_dicts_equal
from minivit.train import (
    TrainConfig,
    fit,
    load_checkpoint,
    load_pretrained_cifar_vit,
    read_checkpoint,
    save_checkpoint,
    upgrade_checkpoint,
)
from minivit.train.checkpoint import SHIPPED_CHECKPOINT
from minivit.train.legacy import TINY_DETR_DEFAULTS_BEFORE_V2
from minivit.vit import ViT, ViTConfig

TINY_VIT = ViTConfig(image_size=16, patch_size=4, num_classes=4, dim=32, depth=2, num_heads=2, mlp_dim=64)
TINY_DETR = dict(num_classes=3, num_queries=4, hidden_dim=32, num_heads=2, dim_feedforward=64, backbone_widths=(8, 16))


def models():
    torch.manual_seed(0)
    vit = ViT(TINY_VIT)
    torch.nn.init.normal_(vit.head.weight, std=0.5)  # the head starts at zero: make the outputs informative
    return {"vit": (vit, torch.randn(2, 3, 16, 16)),
            "small_cnn": (SmallCNN(width=8, num_classes=4).eval(), torch.randn(2, 3, 16, 16)),
            "detr": (build_tiny_detr(**TINY_DETR).eval(), torch.rand(2, 3, 32, 32))}


def outputs(model, images):
    with torch.no_grad():
        out = model.eval()(images)
    return out["pred_boxes"] if isinstance(out, dict) else out


@pytest.mark.parametrize("architecture", ["vit", "small_cnn", "detr"])
def test_config_and_weights_round_trip_through_a_checkpoint(architecture, tmp_path):
    model, images = models()[architecture]
    path = save_checkpoint(tmp_path / "model.pt", model, meta={"classes": ["a", "b", "c"], "note": "round trip"})
    loaded, info = load_checkpoint(path)  # rebuilt from the stored architecture and config
    assert type(loaded) is type(model) and loaded.config == model.config == info["config"]
    assert info["architecture"] == architecture and info["note"] == "round trip" and info["format"] == "minivit/2"
    assert_state_dicts_equal(model, loaded)
    torch.testing.assert_close(outputs(loaded, images), outputs(model, images), rtol=0, atol=0)


def _write(path, **changes):
    """A minivit/2 file of the tiny ViT, with some entries changed."""
    model, _ = models()["vit"]
    save_checkpoint(path, model)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint.update(changes)
    torch.save(checkpoint, path)
    return path


def test_weights_are_checked_against_the_config_before_any_model_is_built(tmp_path, monkeypatch):
    path = _write(tmp_path / "lying.pt", config=TINY_VIT.replace(dim=64, mlp_dim=128).to_dict())
    built_on = []
    original = ViT.reset_parameters

    def spy(self):
        built_on.append(self.head.weight.device.type)
        original(self)

    monkeypatch.setattr(ViT, "reset_parameters", spy)
    with pytest.raises(ValueError, match=r"weights do not fit its own vit config: .*cls_token \(1, 1, 32\) vs "
                                         r"\(1, 1, 64\)"):
        load_checkpoint(path)
    assert built_on == ["meta"]  # sized on the meta device only: no memory was allocated for a model


def test_a_small_file_cannot_ask_for_a_huge_model(tmp_path):
    huge = ViTConfig(image_size=224, patch_size=16, num_classes=1000, dim=4096, depth=32, num_heads=32, mlp_dim=16384)
    path = _write(tmp_path / "huge.pt", config=huge.to_dict())  # 6.5 G parameters: 26 GB in fp32
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"asks for a vit model of 2\d\.\d GB, more than minivit loads"):
        load_checkpoint(path)
    assert time.perf_counter() - started < 10  # nothing allocated, nothing initialized
    with pytest.raises(ValueError, match=r"depth=100000 is beyond the sane limit 256"):
        load_checkpoint(_write(tmp_path / "deep.pt", config=TINY_VIT.replace(depth=100_000).to_dict()))


@pytest.mark.parametrize("changes, message", [
    (dict(architecture="resnet"),
     r"bad or missing architecture 'resnet' \(minivit knows vit, small_cnn, detr, window_vit\)"),
    (dict(config={**TINY_VIT.to_dict(), "dim": -32}), r"invalid vit config: ViTConfig\.dim must be an integer >= 1"),
    (dict(config={**TINY_VIT.to_dict(), "width": 3}), "invalid vit config: ViTConfig has no field.*width"),
    (dict(config={**TINY_VIT.to_dict(), "dim": 33}), "dim=33 is not divisible by num_heads=2"),
    (dict(config=None), "stores no model config"),
    (dict(model=[1, 2]), "bad or missing model"),
    (dict(meta="notes"), "bad or missing meta"),
])
def test_bad_stored_configs_and_layouts_are_named(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_checkpoint(_write(tmp_path / "bad.pt", **changes))


def test_files_that_are_not_checkpoints(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a checkpoint torch can read safely"):
        read_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a minivit checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="holds a Tensor, not a dict"):
        read_checkpoint(tmp_path / "tensor.pt")


def test_nan_weights_are_never_written(tmp_path):
    model, _ = models()["vit"]
    path = save_checkpoint(tmp_path / "last.pt", model, meta={"epoch": 1})
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to write .* 1 weight tensor\(s\) hold NaN or inf \(head.weight\)"):
        save_checkpoint(path, model, meta={"epoch": 2})
    checkpoint = read_checkpoint(path)
    assert checkpoint["meta"]["epoch"] == 1 and torch.isfinite(checkpoint["model"]["head.weight"]).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_checkpoint_with_nonfinite_weights_is_refused_when_read(tmp_path, bad):
    """Finding 12: a file written by other code (or edited) with NaN/inf weights loaded without a word."""
    model, _ = models()["vit"]
    path = save_checkpoint(tmp_path / "model.pt", model)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"]["head.bias"][3] = bad
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"model.pt: 1 weight tensor\(s\) hold NaN or inf \(head.bias\); .*earlier"):
        load_checkpoint(path)


def test_missing_or_broken_normalization_says_what_to_do(tmp_path):
    """Finding 14: a checkpoint without its normalization gave a bare KeyError 'mean' to the notebook."""
    model, _ = models()["vit"]
    _, info = load_checkpoint(save_checkpoint(tmp_path / "plain.pt", model))
    with pytest.raises(KeyError, match="records no normalization 'mean'.*channel_stats"):
        info["mean"]
    with pytest.raises(KeyError, match="has no 'nonsense'; it has .*architecture"):
        info["nonsense"]
    broken = {"normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}}
    with pytest.raises(ValueError, match=r"normalization is unusable .*std > 0"):
        load_checkpoint(save_checkpoint(tmp_path / "broken.pt", model, meta=broken))


# --------------------------------------------------------------------------- the older formats
V1_RECIPE_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup", "label_smoothing", "grad_clip",
                  "min_lr_ratio", "ema_decay", "tta_flip", "tta_shift", "seed")


def as_train_v1(path, target):
    """Rewrite a minivit/2 training checkpoint as the old minivit.train.fit wrote it (format minivit.train/1)."""
    checkpoint = torch.load(path, weights_only=True)
    meta, training = checkpoint["meta"], checkpoint["training"]
    ema = checkpoint["model"] if training["model"] is not None else None
    recipe = {key: meta["train_config"][key] for key in V1_RECIPE_KEYS}
    recipe.update(augment=meta["augment"], train_size=meta["train_size"],
                  progressive=meta["train_config"]["progressive"])
    old = {"format": "minivit.train/1", "epoch": meta["epoch"], "model_class": "ViT",
           "model_config": checkpoint["config"],
           "model": training["model"] if ema is not None else checkpoint["model"], "ema": ema,
           "ema_n_averaged": training["ema_n_averaged"], "optimizer": training["optimizer"],
           "scheduler": training["scheduler"], "scaler": training["scaler"], "rng": training["rng"],
           "history": meta["history"], "recipe": recipe, "normalization": meta["normalization"],
           "classes": meta["classes"], "data": meta["data"]}
    torch.save(old, target)
    return target


def tiny_data(count: int, seed: int) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.randint(0, 4, (count,), generator=generator), ("a", "b", "c", "d"))


def test_a_run_interrupted_under_the_old_format_resumes_exactly(tmp_path):
    train, test = tiny_data(64, 0), tiny_data(32, 1)
    config, options = TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup=0.5, ema_decay=0.9), dict(
        augment=Augment(crop_padding=2), progress=False)
    seed_everything(0, deterministic=True)
    try:
        torch.manual_seed(0)
        full = ViT(TINY_VIT.replace(dropout=0.1))
        fit(full, train, test, config, checkpoint_dir=tmp_path / "full", **options)
        seed_everything(0)
        torch.manual_seed(0)
        fit(ViT(TINY_VIT.replace(dropout=0.1)), train, test, config, checkpoint_dir=tmp_path / "new", stop_after=1,
            **options)
        (tmp_path / "old").mkdir()
        as_train_v1(tmp_path / "new" / "last.pt", tmp_path / "old" / "last.pt")
        resumed = ViT(TINY_VIT.replace(dropout=0.1))
        with pytest.warns(DeprecationWarning, match=r"old checkpoint format \(minivit.train/1\)"):
            history = fit(resumed, train, test, config, checkpoint_dir=tmp_path / "old", **options)
    finally:
        torch.use_deterministic_algorithms(False)
    assert history.epochs == 3
    assert_state_dicts_equal(full, resumed)
    upgraded = upgrade_checkpoint(as_train_v1(tmp_path / "old" / "last.pt", tmp_path / "v1.pt"), tmp_path / "v2.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the upgraded file is of the current format
        model, info = load_checkpoint(upgraded)
    assert info["train_config"]["progressive"] is None and info["augment"]["crop_padding"] == 2
    assert_state_dicts_equal(model, read_checkpoint(tmp_path / "old" / "last.pt")["model"])  # the EMA weights


def test_the_old_tiny_detr_file_loads_with_the_old_defaults(tmp_path):
    stored = dict(num_classes=3, num_queries=4, backbone_widths=(8, 16))  # build_tiny_detr's kwargs, as saved then
    torch.manual_seed(0)
    model = build_tiny_detr(DETRConfig(**{**TINY_DETR_DEFAULTS_BEFORE_V2, **stored, "backbone": "small_conv"})).eval()
    assert model.config.hidden_dim == 128  # the defaults of build_tiny_detr before the registry
    torch.save({"config": stored, "classes": ["square", "circle", "triangle"], "image_size": 32,
                "metrics": {"map50": 0.5}, "model": model.state_dict()}, tmp_path / "old.pt")
    with pytest.warns(DeprecationWarning, match="old checkpoint format"):
        loaded, info = load_tiny_detr(tmp_path / "old.pt")
    assert info["config"] == model.config and info["metrics"] == {"map50": 0.5} and info["image_size"] == 32
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(outputs(loaded, images), outputs(model, images), rtol=0, atol=0)


def test_save_tiny_detr_writes_the_one_format(tmp_path):
    model = build_tiny_detr(**TINY_DETR)
    save_tiny_detr(model, tmp_path / "tiny.pt", TINY_DETR, ["a", "b", "c"], image_size=32, metrics={"map50": 0.1})
    checkpoint = read_checkpoint(tmp_path / "tiny.pt")
    assert checkpoint["architecture"] == "detr" and checkpoint["config"] == model.config.to_dict()
    assert checkpoint["meta"] == {"classes": ["a", "b", "c"], "image_size": 32, "metrics": {"map50": 0.1}}
    with pytest.raises(ValueError, match="differs from the model's own"):
        save_tiny_detr(model, tmp_path / "x.pt", dict(TINY_DETR, num_queries=5), ["a"], image_size=32)


# --------------------------------------------------------------------------- the shipped checkpoints
def test_the_shipped_checkpoints_are_of_the_current_format_and_keep_every_recorded_value():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning: converted once
        vit, info = load_pretrained_cifar_vit()
        detr, detr_info = load_tiny_detr()
    assert info["format"] == "minivit/2" and read_checkpoint(SHIPPED_CHECKPOINT)["training"] is None
    # the plain ViT of the `cpu` recipe before vit_cifar_conv (crop padding 4, a 27-minute budget: today's
    # recipe reproduces it with --crop-padding 4 --time-budget 27 added)
    assert info["command"] == ("python -m minivit.train --config vit_cifar_small --profile cpu --out runs/prog7 "
                               "--no-resume --export runs/prog7/export.pt")
    assert info["test_acc"] == pytest.approx(0.7636) and info["hardware"] == "CPU, 2 cores, 2 threads"
    assert info["epoch"] == 26 and info["history"].epochs == 26
    assert info["wall_seconds"] == pytest.approx(1682.5, abs=0.1)
    assert info["data"].startswith("CIFAR-10 as JPEG image folder") and info["train_size"] == 50_000
    assert info["train_config"]["progressive"] == [[16, 0.5], [24, 0.3], [32, 0.2]]
    assert info["augment"] == {"crop_padding": 4, "flip": True, "trivial_augment": False, "trivial_group_size": 16}
    assert len(info["classes"]) == 10 and info["mean"].shape == (3,) and vit.config.dim == 128
    assert read_checkpoint(TINY_DETR_CHECKPOINT)["architecture"] == "detr"
    assert detr_info["metrics"] == {"map50": 0.9247, "map75": 0.7328, "steps": 2500, "train_minutes": 10.21,
                                    "profile": "cpu"}  # chapter 6's 2,500-step run (issue 14)
    assert detr_info["classes"] == ["square", "circle", "triangle"] and detr_info["image_size"] == 64
    assert detr.config == detr_info["config"] == DETRConfig(**{**TINY_DETR_DEFAULTS_BEFORE_V2, "num_classes": 3,
                                                                "num_queries": 10, "hidden_dim": 64,
                                                                "dim_feedforward": 128, "backbone": "small_conv",
                                                                "backbone_widths": (16, 32, 64)})


def _shipped_cifar_vit(which: str, command: str, epochs: int, test_acc: float):
    """A shipped CIFAR-10 ViT, checked for what every one of them records: (model, info)."""
    from minivit.train.checkpoint import SHIPPED_CIFAR_VITS

    path = SHIPPED_CIFAR_VITS[which]
    assert path.stat().st_size <= 10 * 2**20
    vit, info = load_pretrained_cifar_vit(which)
    assert read_checkpoint(path)["training"] is None and info["format"] == "minivit/2"
    assert info["command"] == command
    assert info["epoch"] == info["history"].epochs == epochs
    assert info["test_acc"] == pytest.approx(test_acc, abs=5e-5)
    assert info["history"].test_acc[-1] == pytest.approx(info["test_acc"])
    assert info["data"].startswith("CIFAR-10 as JPEG image folder") and info["train_size"] == 50_000
    return vit, info


ANALYSIS_COMMAND = ("python -m minivit.train --config vit_cifar_small --profile cpu "
                    "--model '{\"depth\": 6, \"num_heads\": 8}' --time-budget 95 --trivial-augment --ema-decay 0.999 "
                    "--progressive '[[16, 0.4], [24, 0.3], [32, 0.3]]' --eval-every 10 --out runs/analysis --no-resume "
                    "--export runs/analysis/export.pt")
ANALYSIS_EPOCHS, ANALYSIS_TEST_ACC = 56, 0.8018


def test_the_shipped_analysis_vit_is_small_records_its_run_and_loads_by_name():
    """Issue 14: chapter 7's analysis ViT, trained by `python -m minivit.train`, shipped with its history."""
    vit, info = _shipped_cifar_vit("analysis", ANALYSIS_COMMAND, ANALYSIS_EPOCHS, ANALYSIS_TEST_ACC)
    assert (vit.config.depth, vit.config.num_heads, vit.config.dim, vit.config.stem) == (6, 8, 128, "patch")
    assert info["train_config"]["ema_decay"] == 0.999 and info["augment"]["trivial_augment"] is True
    with pytest.raises(ValueError, match=r"no shipped CIFAR-10 ViT called 'large'; choose one of \['analysis', "):
        load_pretrained_cifar_vit("large")


RECIPE_COMMAND = "python -m minivit.train --profile cpu --out runs/conv1 --no-resume --export runs/conv1/export.pt"
RECIPE_EPOCHS, RECIPE_TEST_ACC, RECIPE_WALL_SECONDS = 36, 0.8052, 1691.8


def test_the_shipped_recipe_vit_is_the_cpu_recipes_default_command_and_reaches_80_percent():
    """Issue 14: the `cpu` recipe's own run (its default command, nothing added), within 30 minutes."""
    from minivit.models import MODEL_CONFIGS
    from minivit.train.recipes import RECIPES

    vit, info = _shipped_cifar_vit("conv", RECIPE_COMMAND, RECIPE_EPOCHS, RECIPE_TEST_ACC)
    assert info["test_acc"] >= 0.80
    recipe = RECIPES["cpu"]
    assert vit.config == MODEL_CONFIGS[recipe.model] and recipe.model == "vit_cifar_conv"
    assert (vit.config.stem, vit.config.pool, vit.config.pos_embed) == ("conv", "mean", "sincos2d")
    expected = json.loads(json.dumps(recipe.train.replace(epochs=RECIPE_EPOCHS).to_dict()))  # tuples -> lists
    assert info["train_config"] == {key: expected[key] for key in info["train_config"]}
    assert info["augment"]["crop_padding"] == recipe.data.crop_padding == 2
    assert info["wall_seconds"] == pytest.approx(RECIPE_WALL_SECONDS, abs=0.1) and info["wall_seconds"] < 30 * 60
    assert info["hardware"] == "CPU, 2 cores, 2 threads"


def test_a_text_file_as_a_checkpoint_names_the_file_and_the_fix(tmp_path):
    """Issue 13, findings 10/14: the message named the file but not what to do."""
    from minivit.train import load_checkpoint

    path = tmp_path / "notes.pt"
    path.write_text("these are my notes, not weights\n")
    with pytest.raises(ValueError, match=r"notes\.pt is not a checkpoint.*delete it and resume from the previous"):
        load_checkpoint(path)
