"""Devices and precision without a GPU.

* Precision and compile are chosen from faked CUDA capabilities (a T4, an A100, an H100, an H200).
* Under ``minivit.testing.fake_accelerator()`` the training, evaluation and notebook-facing
  helpers run on PyTorch's ``meta`` device, which refuses to mix its tensors with CPU tensors as
  a GPU does: a helper that forgets to move a model, a batch or a random mask fails here.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import minivit
from minivit import devices
from minivit.conv import SmallCNN, train_briefly
from minivit.data import ImageSet, make_shapes
from minivit.detection import detect, evaluate_map, train_detr
from minivit.detr import build_tiny_detr
from minivit.testing import FAKE_DEVICE, assert_on_device, fake_accelerator
from minivit.train import TrainConfig, evaluate, fit, plan_epochs, predict, resolve_amp
from minivit.vit import build_vit

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
GPUS = {  # name: (compute capability, has bf16 units)
    "Tesla T4": ((7, 5), False),
    "Tesla V100-SXM2-16GB": ((7, 0), False),
    "NVIDIA A100-SXM4-40GB": ((8, 0), True),
    "NVIDIA H100 80GB HBM3": ((9, 0), True),
    "NVIDIA H200": ((9, 0), True),
}


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make torch.cuda answer like the named GPU (no CUDA calls reach a driver)."""

    def install(name: str, triton: bool = True):
        capability, bf16 = GPUS[name]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        # like torch: with emulation every CUDA GPU "supports" bf16 (the trap on a T4)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: True if including_emulation else bf16)
        monkeypatch.setattr(devices, "_has_triton", lambda: triton)
        return torch.device("cuda")

    return install


# --------------------------------------------------------------------------- precision per capability
def test_t4_gets_fp16_with_grad_scaler_not_emulated_bf16(fake_gpu):
    cuda = fake_gpu("Tesla T4")
    precision = devices.choose_precision(cuda)
    assert (precision.dtype, precision.grad_scaler, precision.compile) == (torch.float16, True, True)
    assert "compute capability 7.5" in precision.reason and "no bf16 units" in precision.reason
    assert resolve_amp("auto", cuda) is torch.float16  # the training loop's choice agrees
    with pytest.raises(ValueError, match="no bf16 units.*amp='fp16'"):
        devices.choose_precision(cuda, amp="bf16")


@pytest.mark.parametrize("name", ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "NVIDIA H200"])
def test_ampere_and_hopper_get_bf16_without_scaler(fake_gpu, name):
    precision = devices.choose_precision(fake_gpu(name))
    assert (precision.dtype, precision.grad_scaler, precision.compile) == (torch.bfloat16, False, True)
    assert str(precision).startswith("bf16 autocast, torch.compile on")


def test_cpu_gets_fp32_and_no_compile():
    precision = devices.choose_precision("cpu")
    assert (precision.dtype, precision.grad_scaler, precision.compile) == (None, False, False)
    assert str(precision).startswith("fp32, torch.compile off")
    assert devices.choose_precision("cpu", compile=True).compile  # asked for: inductor works on CPUs
    assert resolve_amp("auto", torch.device("cpu")) is None


def test_compile_only_where_it_works(fake_gpu):
    assert not devices.choose_precision(fake_gpu("Tesla T4", triton=False)).compile
    with pytest.raises(ValueError, match="torch.compile asked"):
        devices.choose_precision(fake_gpu("Tesla T4", triton=False), compile=True)
    assert not devices.choose_precision(fake_gpu("NVIDIA H100 80GB HBM3"), compile=False).compile
    with pytest.raises(ValueError, match="amp must be one of"):
        devices.choose_precision("cpu", amp="float8")


def test_autocast_helper_is_a_no_op_for_fp32():
    with devices.autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with devices.autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


# --------------------------------------------------------------------------- device and profile choice
def test_device_from_environment_and_independent_of_profile(monkeypatch, fake_gpu):
    monkeypatch.delenv("MINIVIT_PROFILE", raising=False)
    monkeypatch.delenv("MINIVIT_DEVICE", raising=False)
    fake_gpu("Tesla T4")
    assert minivit.get_device().type == "cuda" and minivit.get_profile() == "gpu"
    monkeypatch.setenv("MINIVIT_DEVICE", "cpu")  # a GPU machine, told to use its CPU
    assert minivit.get_device().type == "cpu" and minivit.get_profile() == "cpu"
    monkeypatch.setenv("MINIVIT_DEVICE", "cuda")
    monkeypatch.setenv("MINIVIT_PROFILE", "smoke")  # smoke sizes on the GPU
    assert minivit.get_device().type == "cuda" and minivit.get_profile() == "smoke"


def test_bad_devices_get_clear_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("MINIVIT_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="Change runtime type > GPU"):
        minivit.get_device()
    monkeypatch.setenv("MINIVIT_DEVICE", "tpu")
    with pytest.raises(ValueError, match="choose one of cpu, cuda, mps"):
        minivit.get_device()


def test_setup_takes_effect_and_says_why(monkeypatch, capsys):
    monkeypatch.delenv("MINIVIT_PROFILE", raising=False)
    monkeypatch.delenv("MINIVIT_DEVICE", raising=False)
    minivit.setup(profile="smoke", device="cpu")
    shown = capsys.readouterr().out
    assert minivit.get_profile() == "smoke" and minivit.get_device().type == "cpu"
    assert "profile 'smoke' (set by" in shown and "device cpu (set by" in shown and "fp32" in shown
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        minivit.setup(profile="fast")
    monkeypatch.delenv("MINIVIT_PROFILE")
    monkeypatch.delenv("MINIVIT_DEVICE")
    minivit.setup()  # None keeps the defaults
    assert "profile 'cpu' (the default" in capsys.readouterr().out


def test_to_device_moves_containers():
    batch = {"images": torch.zeros(2, 3), "targets": [{"boxes": torch.zeros(1, 4)}], "name": "x"}
    moved = minivit.to_device(batch, FAKE_DEVICE)
    assert moved["images"].is_meta and moved["targets"][0]["boxes"].is_meta and moved["name"] == "x"
    assert minivit.to_device(torch.nn.Linear(2, 2), FAKE_DEVICE).weight.is_meta


# --------------------------------------------------------------------------- helpers on a fake accelerator
def _tiny_image_set(count: int = 40) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return ImageSet(images, torch.arange(count) % 10, tuple(f"class {i}" for i in range(10)))


def test_fake_accelerator_refuses_mixed_devices():
    with fake_accelerator() as device:
        assert minivit.get_device() == device
        on_device = torch.zeros(4, 3, device=device)
        with pytest.raises(RuntimeError, match="device"):
            torch.where(torch.rand(4, 1) < 0.5, on_device, on_device.flip(1))  # chapter 1's old random flip
        with pytest.raises(RuntimeError, match="device"):
            torch.nn.Linear(3, 2)(on_device)  # a model left on the CPU


@pytest.mark.parametrize("model_name", ["vit_cifar_small", "small_cnn"])
def test_fit_evaluate_predict_on_the_device(model_name, capsys):
    data = _tiny_image_set()
    with fake_accelerator() as device:
        model = SmallCNN() if model_name == "small_cnn" else build_vit("vit_cifar_small", dynamic_size=True)
        config = TrainConfig(epochs=1, batch_size=20, ema_decay=0.9, tta_flip=True, tta_shift=1,
                             progressive=[[16, 0.5], [32, 0.5]] if model_name != "small_cnn" else None)
        history = fit(model, data, data, config, progress=True)
        assert_on_device(model, device)
        assert history.epochs == 1
        assert predict(model, data.images, *torch.ones(2, 3), tta_flip=True).device == device
        assert evaluate(model, data, *torch.ones(2, 3))[1] == 1.0  # ones read back: the loop ran through
    assert f"training on {device}: fp32" in capsys.readouterr().out


def test_plan_epochs_on_the_device():
    data = _tiny_image_set()
    with fake_accelerator():
        epochs, _ = plan_epochs(build_vit("vit_cifar_small"), data, data, budget_seconds=60,
                                config=TrainConfig(batch_size=20), steps=1)
    assert epochs >= 1


def test_chapter1_brief_training_on_the_device():
    data = _tiny_image_set()
    with fake_accelerator() as device:
        cnn = SmallCNN()
        losses = train_briefly(cnn, data.images, data.labels, *torch.ones(2, 3), steps=3, batch_size=8,
                               progress=False)
        assert_on_device(cnn, device)
    assert len(losses) == 3


def test_chapter6_tiny_detr_trains_and_detects_on_the_device():
    shapes = make_shapes(6, 32, seed=0)
    with fake_accelerator() as device:
        model = build_tiny_detr(num_classes=3, num_queries=4, hidden_dim=16, num_heads=2, num_encoder_layers=1,
                                num_decoder_layers=1, dim_feedforward=32, backbone_widths=(8, 8, 16))
        history = train_detr(model, shapes.images, shapes.targets, steps=2, batch_size=3, progress=False)
        assert_on_device(model, device)  # the model trains where the device says, not where it was built
        assert len(history) == 2
        assert len(detect(model, shapes.images, threshold=0.5)) == len(shapes.images)
        evaluate_map(model, shapes.images, shapes.targets)


def test_a_detr_training_step_reads_the_device_2_plus_one_per_decoder_layer_times():
    """Issue 13: validation at the entry points, not inside the step. A step reads the device back for the
    target check (one copy), one cost matrix per decoder layer (scipy's assignment runs on the host) and the
    step's four loss values (one copy). Before: about 100 reads per step (box checks in every loss term)."""
    from minivit.testing import count_host_syncs

    shapes = make_shapes(16, 64, seed=0)
    counts = {}
    for layers in (1, 3):
        for steps in (1, 3):
            with fake_accelerator():
                model = build_tiny_detr(num_decoder_layers=layers)
                with count_host_syncs() as syncs:
                    train_detr(model, shapes.images, shapes.targets, steps=steps, batch_size=8, progress=False)
            counts[layers, steps] = syncs.count
    assert counts == {(1, 1): 3, (1, 3): 9, (3, 1): 5, (3, 3): 15}, counts


# --------------------------------------------------------------------------- notebooks decide no devices
RAW_DEVICE_DECISION = re.compile(
    r"\.to\(\s*(device|[\"']cuda|[\"']cpu|[\"']mps)|\.cuda\(|torch\.cuda\.|torch\.autocast|"
    r"torch\.device\(\s*[\"'](cuda|cpu|mps)|GradScaler|is_bf16_supported")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebooks_leave_devices_and_precision_to_minivit(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    offending = [f"cell {i}: {line.strip()}" for i, cell in enumerate(cells) if cell["cell_type"] == "code"
                 for line in "".join(cell["source"]).splitlines() if RAW_DEVICE_DECISION.search(line)]
    assert not offending, f"{notebook.name} moves tensors or picks precision itself: {offending}"


def test_chapter7_attention_capture_with_the_model_on_the_device():
    from minivit.viz import capture_attention

    images = torch.rand(2, 3, 32, 32)  # preprocessed, on the CPU
    with fake_accelerator() as device:
        model = minivit.to_device(build_vit("vit_cifar_small"), device)
        logits, attention = capture_attention(model, images)
    assert logits.device.type == "cpu" and attention.shape == (4, 2, 4, 65, 65)


def test_cpu_threads_sets_and_restores_the_thread_count_even_after_an_error():
    from minivit.devices import cpu_threads

    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), cpu_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with cpu_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads >= 1 or None, got 0"), cpu_threads(0):
        pass


def test_measure_attention_cost_times_with_the_threads_asked_and_restores_them(monkeypatch):
    import minivit.attention as attention

    seen = []
    real = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    before = torch.get_num_threads()
    attention.measure_attention_cost(16, head_dim=8, repeats=2, threads=1)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
