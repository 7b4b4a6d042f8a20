"""Issue 13: seeded fuzzing of the public entry points with wrong shapes, dtypes, NaN/inf, empty batches and
files that are not checkpoints. Every case either works (finite output where the input was finite) or raises
a ValueError/TypeError whose message names the argument (or the file)."""
import math
import random

import numpy as np
import pytest
import torch

from minivit.detr import build_tiny_detr
from minivit.matching import HungarianMatcher, SetCriterion
from minivit.train import load_checkpoint
from minivit.vit import ViT

SEED = 13
CASES_PER_TARGET = 60


def _image_batch(rng: random.Random, size: int):
    """A batch of images that is usually wrong in one way; returns (images, valid)."""
    kind = rng.choice(["ok", "ok", "dims", "channels", "size", "empty", "dtype", "nan", "inf", "list", "numpy"])
    batch = rng.choice([1, 2])
    images = torch.rand(batch, 3, size, size)
    if kind == "dims":
        images = torch.rand(*rng.choice([(3, size, size), (batch, 3, size), (batch, 1, 3, size, size), (size,)]))
    elif kind == "channels":
        images = torch.rand(batch, rng.choice([1, 4]), size, size)
    elif kind == "size":
        images = torch.rand(batch, 3, size + rng.choice([1, 3]), size + rng.choice([0, 5]))
    elif kind == "empty":
        images = torch.rand(0, 3, size, size)
    elif kind == "dtype":
        images = (images * 255).to(rng.choice([torch.uint8, torch.int64, torch.bool, torch.float64]))
    elif kind in ("nan", "inf"):
        images[0, 0, rng.randrange(size), rng.randrange(size)] = float(kind)
    elif kind == "list":
        images = images.tolist()
    elif kind == "numpy":
        images = images.numpy()
    return images, kind, ("ok", "empty")


def _check(call, names, kind, ok_kinds):
    """Run ``call``; an error must be a ValueError/TypeError naming one of ``names``."""
    try:
        result = call()
    except (ValueError, TypeError) as error:
        message = str(error)
        assert any(name in message for name in names), f"{kind}: message names none of {names}: {message}"
        return "refused"
    if kind in ok_kinds:
        leaves = [t for t in (result.values() if isinstance(result, dict) else [result]) if isinstance(t, torch.Tensor)]
        assert all(torch.isfinite(t).all() for t in leaves), f"{kind}: non-finite output from finite input"
    return "worked"


def test_fuzz_vit_forward():
    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    model = ViT(image_size=16, patch_size=4, num_classes=3, dim=16, depth=1, num_heads=2, mlp_dim=32).eval()
    outcomes = []
    for _ in range(CASES_PER_TARGET):
        images, kind, ok = _image_batch(rng, 16)
        with torch.no_grad():
            outcomes.append(_check(lambda: model(images), ("images",), kind, ok))
    assert "refused" in outcomes and "worked" in outcomes


def test_fuzz_detr_forward():
    rng = random.Random(SEED + 1)
    torch.manual_seed(SEED)
    model = build_tiny_detr(num_classes=3, num_queries=4, hidden_dim=16, num_heads=2, dim_feedforward=32,
                            backbone_widths=(8, 8, 8)).eval()
    outcomes = []
    for _ in range(CASES_PER_TARGET):
        images, kind, ok = _image_batch(rng, 32)
        mask = None
        if rng.random() < 0.3 and isinstance(images, torch.Tensor) and images.dim() == 4:
            mask = rng.choice([torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool),
                               torch.zeros(images.shape[0], 5, 5, dtype=torch.bool),
                               torch.zeros(images.shape[0], *images.shape[-2:])])
            kind = kind + "+mask"
        with torch.no_grad():
            outcomes.append(_check(lambda: model(images, mask), ("images", "mask"), kind,
                                   tuple(k + "+mask" for k in ok) if mask is not None and mask.shape[-1] != 5
                                   and mask.dtype == torch.bool else ok))
    assert "refused" in outcomes and "worked" in outcomes


def _detr_case(rng: random.Random, num_classes=3, queries=5):
    batch = rng.choice([0, 1, 2, 3])
    outputs = {"pred_logits": torch.randn(batch, queries, num_classes + 1),
               "pred_boxes": torch.rand(batch, queries, 4) * 0.5 + 0.25}
    counts = [rng.choice([0, 1, 2]) for _ in range(batch)]
    targets = [{"labels": torch.randint(0, num_classes, (n,)), "boxes": torch.rand(n, 4) * 0.5 + 0.25}
               for n in counts]
    kind = rng.choice(["ok", "ok", "logits_shape", "boxes_shape", "nan_pred", "missing_key", "label_range",
                       "pixel_boxes", "nan_box", "neg_size", "label_dtype", "box_shape", "too_many_targets",
                       "targets_count", "not_a_list", "box_dtype"])
    if kind == "logits_shape":
        outputs["pred_logits"] = torch.randn(batch, queries)
    elif kind == "boxes_shape":
        outputs["pred_boxes"] = torch.rand(batch, queries, 2)
    elif kind == "nan_pred" and batch:
        outputs[rng.choice(["pred_logits", "pred_boxes"])][0, 0, 0] = float("nan")
    elif kind == "missing_key":
        del outputs[rng.choice(["pred_logits", "pred_boxes"])]
    elif kind == "not_a_list":
        targets = {"labels": torch.zeros(0, dtype=torch.int64)}
    elif kind == "targets_count":
        targets = targets + [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    elif kind == "too_many_targets" and batch:
        targets[0] = {"labels": torch.zeros(queries + 1, dtype=torch.int64), "boxes": torch.full((queries + 1, 4), .5)}
    elif targets and any(counts):
        image = next(i for i, n in enumerate(counts) if n)
        target = targets[image]
        if kind == "label_range":
            target["labels"][0] = rng.choice([num_classes, num_classes + 4, -1])
        elif kind == "pixel_boxes":
            target["boxes"] = target["boxes"] * 320
        elif kind == "nan_box":
            target["boxes"][0, rng.randrange(4)] = rng.choice([float("nan"), float("inf")])
        elif kind == "neg_size":
            target["boxes"][0, 2] = -0.1
        elif kind == "label_dtype":
            target["labels"] = target["labels"].float()
        elif kind == "box_shape":
            target["boxes"] = target["boxes"][:, :3]
        elif kind == "box_dtype":
            target["boxes"] = (target["boxes"] * 10).long()
    return outputs, targets, kind


@pytest.mark.parametrize("entry", ["matcher", "criterion"])
def test_fuzz_matcher_and_criterion(entry):
    rng = random.Random(SEED + (entry == "criterion"))
    names = ("outputs", "targets", "pred_logits", "pred_boxes", "num_classes")
    outcomes = []
    for _ in range(CASES_PER_TARGET):
        outputs, targets, kind = _detr_case(rng)
        call = (lambda: HungarianMatcher()(outputs, targets)) if entry == "matcher" else \
            (lambda: SetCriterion(num_classes=3)(outputs, targets))
        outcome = _check(call, names, kind, ("ok",))
        outcomes.append(outcome)
    assert "refused" in outcomes and "worked" in outcomes


def test_fuzz_load_checkpoint(tmp_path):
    rng = random.Random(SEED)
    np_rng = np.random.default_rng(SEED)
    contents = [b"", b"hello\n", bytes(np_rng.integers(0, 256, 2000, dtype=np.uint8)), b"PK\x03\x04" + b"\0" * 50]
    for value in ({}, {"format": "minivit/2"}, [1, 2], {"model": {"w": torch.zeros(2)}}, torch.zeros(3),
                  {"format": "minivit/2", "architecture": "vit", "config": {"dim": -1}, "model": {}, "meta": {},
                   "training": None}):
        path = tmp_path / f"value{len(contents)}.pt"
        torch.save(value, path)
        contents.append(path.read_bytes())
    real = tmp_path / "real.pt"
    torch.save({"format": "minivit/2"}, real)
    good = real.read_bytes()
    for cut in sorted(rng.sample(range(1, len(good)), 6)):
        contents.append(good[:cut])  # half-written
    for index, data in enumerate(contents):
        path = tmp_path / f"case{index}.pt"
        path.write_bytes(data)
        with pytest.raises((ValueError, TypeError)) as caught:
            load_checkpoint(path)
        assert str(path) in str(caught.value), str(caught.value)
    for path in (tmp_path / "missing.pt", tmp_path):
        with pytest.raises((FileNotFoundError, ValueError, IsADirectoryError)) as caught:
            load_checkpoint(path)
        assert str(path) in str(caught.value)


# --------------------------------------------------------------------------- the CLI and the device setting
CLI_FLAGS = ("--epochs", "--batch-size", "--lr", "--weight-decay", "--warmup", "--label-smoothing", "--grad-clip",
             "--ema-decay", "--min-lr-ratio", "--tta-shift", "--eval-every", "--train-limit", "--test-limit",
             "--crop-padding", "--progressive", "--time-budget", "--amp", "--compile", "--seed")
CLI_VALUES = ("-1", "0", "1", "3", "0.5", "1e-3", "2.5", "nan", "inf", "-inf", "1e309", "abc", "", "none", "true",
              "[[16, 1]]", "[[16, 0.5], [32, 0.6]]", "{}", "[]", "[[0, 1]]", "auto", "fp16", "99999999999999999999")


def test_fuzz_cli_flags(capsys):
    """Random flags with random values: parsed into configs with every number finite, or an argparse error (exit
    2) that names one of the flags given. Nothing is loaded or trained (configs_from_args only)."""
    from minivit.train.__main__ import build_parser, configs_from_args

    rng = random.Random(SEED + 7)
    outcomes = []
    for _ in range(3 * CASES_PER_TARGET):
        chosen = rng.sample(CLI_FLAGS, rng.choice([1, 2, 3]))
        argv = [item for flag in chosen for item in (flag, rng.choice(CLI_VALUES))]
        parser = build_parser()
        try:
            args = parser.parse_args(["--out", "unused", *argv])
            train, data = configs_from_args(parser, args, "smoke")
        except SystemExit as stop:
            error = capsys.readouterr().err
            assert stop.code == 2 and any(f"argument {flag}" in error for flag in argv[::2]), (argv, error)
            outcomes.append("refused")
            continue
        numbers = [v for config in (train, data) for v in config.to_dict().values() if isinstance(v, (int, float))]
        assert all(math.isfinite(v) for v in numbers), (argv, train, data)
        assert args.time_budget is None or 0 <= args.time_budget < math.inf, argv
        outcomes.append("worked")
    assert outcomes.count("refused") > 50 and outcomes.count("worked") > 10


def test_fuzz_device_settings(monkeypatch):
    """get_device/use_device and $MINIVIT_DEVICE with names a learner might type: a device, or a ValueError/TypeError
    naming the setting, or (a real device this machine lacks) a RuntimeError that says what to do."""
    from minivit import devices

    names = ["cpu", "CPU", " cpu ", "cpu:0", "cuda", "cuda:1", "gpu", "GPU:0", "tpu", "", "  ", "mps", "meta",
             "cuda:x", "xla", "cpu,cuda", 3, 0.5, torch.device("cpu"), ["cpu"]]
    for name in names:
        for call in (devices.get_device, devices.use_device):
            try:
                device = call(name)
            except (ValueError, TypeError) as error:
                assert "device" in str(error), (name, error)
                continue
            except RuntimeError as error:
                assert "asks for" in str(error) and ("cpu" in str(error)), (name, error)
                continue
            finally:
                monkeypatch.delenv("MINIVIT_DEVICE", raising=False)
            assert device.type in (*devices.DEVICE_TYPES, "meta"), (name, device)
        if isinstance(name, str):
            monkeypatch.setenv("MINIVIT_DEVICE", name)
            try:
                assert devices.get_device().type in devices.DEVICE_TYPES
            except (ValueError, RuntimeError) as error:
                assert "MINIVIT_DEVICE" in str(error), (name, error)
            monkeypatch.delenv("MINIVIT_DEVICE")
