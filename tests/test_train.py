"""The training loop (minivit.train): optimizer groups, schedule, checkpoints and exact resume, DDP,
out-of-range settings and divergence."""
import math
import re

import pytest
import torch
import torch.multiprocessing as mp

from minivit.data import ImageSet, load_cifar10
from minivit.data.augment import Augment, normalize
from minivit.runtime import seed_everything
from minivit.testing import assert_state_dicts_equal
from minivit.train import (
    ConfigError,
    History,
    TrainConfig,
    TrainingDiverged,
    confusion_matrix,
    export_checkpoint,
    fit,
    load_checkpoint,
    load_pretrained_cifar_vit,
    misclassified,
    param_groups,
    plan_epochs,
    predict,
    read_checkpoint,
    resize_batch,
    resolve_amp,
    train_sizes,
    warmup_cosine,
)
from minivit.vit import ViT, ViTConfig

TINY = dict(image_size=16, patch_size=4, num_classes=4, dim=32, depth=2, num_heads=2, mlp_dim=64)


def tiny_data(count: int, seed: int) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 4, (count,), generator=generator)
    return ImageSet(images, labels, ("a", "b", "c", "d"))


TRAIN, TEST = tiny_data(64, 0), tiny_data(32, 1)
CONFIG = TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup=0.5)
OPTIONS = dict(augment=Augment(crop_padding=2), progress=False)


def tiny_vit(seed: int = 0, **overrides) -> ViT:
    torch.manual_seed(seed)
    return ViT(**{**TINY, **overrides})


def test_weight_decay_skips_norms_biases_and_tokens():
    model = tiny_vit()
    decay, no_decay = param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"cls_token", "pos_embed", "patch_embed.proj.bias", "encoder.norm.weight",
            "encoder.blocks.0.norm1.bias"} <= no_decay_names
    assert {"patch_embed.proj.weight", "head.weight", "encoder.blocks.1.attn.qkv.weight"} <= decay_names
    assert all(not n.endswith("bias") and "norm" not in n for n in decay_names)
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))
    embedding = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    decay, no_decay = param_groups(embedding, 0.1)
    assert [p.shape for p in no_decay["params"]] == [(10, 4), (2,)]


def test_warmup_then_cosine_follow_the_formula():
    base, total, warm, floor = 0.1, 20, 5, 0.01
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = warmup_cosine(optimizer, total_steps=total, warmup_steps=warm, min_lr_ratio=floor)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    start = 1 / warm
    expected = [base * (start + (1 - start) * t / warm) if t < warm else
                floor * base + (base - floor * base) * (1 + math.cos(math.pi * (t - warm) / (total - warm))) / 2
                for t in range(total)]
    assert seen == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert seen[warm] == pytest.approx(base) and max(seen) == pytest.approx(base)
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(optimizer, total_steps=5, warmup_steps=5)


def test_resumed_run_ends_with_the_same_weights(tmp_path):
    seed_everything(0, deterministic=True)
    try:
        config = CONFIG.replace(ema_decay=0.9)
        full = tiny_vit(dropout=0.1)
        full_history = fit(full, TRAIN, TEST, config, checkpoint_dir=tmp_path / "full", **OPTIONS)

        seed_everything(0)
        interrupted = tiny_vit(dropout=0.1)
        first = fit(interrupted, TRAIN, TEST, config, checkpoint_dir=tmp_path / "cut", stop_after=1, **OPTIONS)
        assert first.epochs == 1
        torch.manual_seed(123)  # a new session: other RNG state, fresh model
        resumed = tiny_vit(seed=7, dropout=0.1)
        history = fit(resumed, TRAIN, TEST, config, checkpoint_dir=tmp_path / "cut", **OPTIONS)
    finally:
        torch.use_deterministic_algorithms(False)
    assert history.epochs == 3 and history.test_acc == full_history.test_acc
    assert history.train_loss == full_history.train_loss
    assert_state_dicts_equal(full, resumed)
    model, info = load_checkpoint(tmp_path / "cut" / "last.pt")  # rebuilt from the stored config; EMA weights
    assert info["epoch"] == 3 and info["history"].test_acc == history.test_acc
    assert model.config == ViTConfig(**TINY, dropout=0.1) == info["config"]
    assert info["train_config"] == config.to_dict()


def test_load_checkpoint_checks_architecture_and_file(tmp_path):
    model = tiny_vit()
    fit(model, TRAIN, TEST, CONFIG.replace(epochs=1), checkpoint_dir=tmp_path, **OPTIONS)
    rebuilt, info = load_checkpoint(tmp_path / "last.pt")
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(rebuilt(images), model.eval()(images), rtol=0, atol=0)
    assert len(info["mean"]) == 3 and info["classes"] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="holds a vit with config .*'dim': 32.* but the model is a vit"):
        load_checkpoint(tmp_path / "last.pt", model=tiny_vit(dim=48, num_heads=3))
    with pytest.raises(ValueError, match=r"another recipe .*'epochs': \(1, 2\)"):
        fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(epochs=2), checkpoint_dir=tmp_path, **OPTIONS)
    fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(epochs=1, eval_every=0, eval_batch_size=7), checkpoint_dir=tmp_path,
        **OPTIONS)  # settings that do not change the weights' path may change on resume
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a minivit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    small = export_checkpoint(tmp_path / "last.pt", tmp_path / "small.pt", command="test", test_acc=0.5)
    _, small_info = load_checkpoint(small)
    assert small_info["command"] == "test" and read_checkpoint(small)["training"] is None
    with pytest.raises(ValueError, match="no training state"):
        fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(epochs=1), checkpoint_dir=_folder_with(small, tmp_path / "x"),
            **OPTIONS)


def _folder_with(checkpoint, folder):
    folder.mkdir()
    (folder / "last.pt").write_bytes(checkpoint.read_bytes())
    return folder


def test_shipped_checkpoint_loads_and_names_its_recipe():
    model, info = load_pretrained_cifar_vit()
    assert type(model).__name__ == "ViT" and model.config.image_size == 32 and model.config["image_size"] == 32
    assert info["command"].startswith("python -m minivit.train") and 0.3 < info["test_acc"] <= 1
    test = load_cifar10("test", limit=200)
    logits = predict(model, test.images, info["mean"], info["std"])
    assert logits.shape == (200, 10)
    assert (logits.argmax(1) == test.labels).float().mean() > 0.25  # trained: far above chance (10 %)


def _ddp_worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = tiny_vit()
        history = fit(model, TRAIN, TEST, CONFIG.replace(epochs=2), **OPTIONS)
        if rank == 0:
            torch.save({"model": model.state_dict(), "history": history.to_dict()}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_with_two_processes_matches_one_process(tmp_path):
    single = tiny_vit()
    single_history = fit(single, TRAIN, TEST, CONFIG.replace(epochs=2), **OPTIONS)
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    # The gradients agree to float rounding, but Adam divides by sqrt(v): on near-zero gradients that
    # rounding can move a weight by up to ~lr per step. So: every weight within lr/2, the average far closer.
    lr = CONFIG.lr
    differences = [(result["model"][name] - value).abs() for name, value in single.state_dict().items()]
    assert max(d.max().item() for d in differences) < lr / 2
    assert torch.cat([d.flatten() for d in differences]).mean().item() < lr / 100
    assert History.from_dict(result["history"]).train_loss == pytest.approx(single_history.train_loss, rel=1e-4)
    assert History.from_dict(result["history"]).test_acc == pytest.approx(single_history.test_acc, abs=1e-6)


def test_confusion_matrix_and_misclassified():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert torch.equal(confusion_matrix(predictions, labels, 3), expected)
    confidences = torch.tensor([0.9, 0.5, 0.9, 0.9, 0.8, 0.9])
    assert misclassified(predictions, labels, confidences).tolist() == [4, 1]
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(predictions[:3], labels, 3)


def test_progressive_schedule_gives_each_phase_its_share_of_epochs():
    phases = [(16, 0.4), (24, 0.3), (32, 0.3)]
    assert train_sizes(phases, 10, 32) == [16] * 4 + [24] * 3 + [32] * 3
    assert train_sizes(phases, 21, 32) == [16] * 8 + [24] * 7 + [32] * 6
    assert train_sizes(None, 3, 32) == [32, 32, 32]
    assert train_sizes([[8, 0.5], [16, 0.5]], 1, 16) == [16]  # the middle of the only epoch is in phase 2
    for bad, message in [([(16, 0.5), (32, 0.4)], "add up to 1"), ([16, 32], "pairs"), ([], "non-empty list"),
                         ([(16, -0.5), (32, 1.5)], r"sizes must be >= 1 and fractions in \(0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            train_sizes(bad, 4, 32)


def test_resize_batch_downscales_with_antialiasing():
    images = torch.zeros(2, 3, 32, 32)
    images[..., ::2] = 1.0  # stripes one pixel wide: aliasing would keep them, averaging gives 0.5
    small = resize_batch(images, 16)
    assert small.shape == (2, 3, 16, 16)
    inner = small[..., 1:-1]  # away from the border, where the filter is cut off
    torch.testing.assert_close(inner, torch.full_like(inner, 0.5))
    assert resize_batch(images, 32) is images


def test_progressive_run_trains_at_each_size_and_tests_every_other_epoch(tmp_path, monkeypatch):
    seen = []
    model = tiny_vit(dynamic_size=True)
    original = model.patch_embed.forward

    def record(images):
        if model.training:
            seen.append(images.shape[-1])
        return original(images)

    monkeypatch.setattr(model.patch_embed, "forward", record)
    config = CONFIG.replace(epochs=4, progressive=[(8, 0.5), (16, 0.5)], eval_every=3)
    history = fit(model, TRAIN, TEST, config, checkpoint_dir=tmp_path, **OPTIONS)
    steps = len(TRAIN) // CONFIG.batch_size
    assert seen == [8] * 2 * steps + [16] * 2 * steps
    assert math.isnan(history.test_acc[0]) and math.isnan(history.test_loss[1])
    assert not math.isnan(history.test_acc[2]) and not math.isnan(history.test_acc[3])  # every 3rd and the last
    _, info = load_checkpoint(tmp_path / "last.pt")
    assert info["train_config"]["progressive"] == [[8, 0.5], [16, 0.5]]
    history.plot()  # skips the untested epochs
    with pytest.raises(ValueError, match="dynamic_size=True"):  # a fixed-size ViT says how to fix it
        fit(tiny_vit(), TRAIN, TEST, config.replace(epochs=2), **OPTIONS)
    with pytest.raises(ValueError, match="eval_every"):
        config.replace(eval_every=-1)
    only_last = fit(tiny_vit(dynamic_size=True), TRAIN, TEST, config.replace(epochs=3, eval_every=0), **OPTIONS)
    assert [math.isnan(acc) for acc in only_last.test_acc] == [True, True, False]


def test_planner_fits_the_epochs_into_the_budget_and_leaves_the_model_alone():
    model = tiny_vit(dynamic_size=True)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    config = TrainConfig(batch_size=16, progressive=[(8, 0.5), (16, 0.5)], eval_every=2)
    epochs, seconds = plan_epochs(model, TRAIN, TEST, 1e6, config, augment=Augment(crop_padding=2), steps=2)
    assert seconds > 0 and epochs == int(1e6 // seconds)
    assert plan_epochs(model, TRAIN, TEST, 1e-3, TrainConfig(batch_size=16), steps=1)[0] == 1  # at least one
    once, _ = plan_epochs(model, TRAIN, TEST, 1e6, TrainConfig(batch_size=16, eval_every=0, tta_shift=1), steps=2)
    assert once >= 1
    assert_state_dicts_equal(before, model)


class StepClock:
    """A stand-in for time.perf_counter: every second call ends a timed interval of the next given length."""

    def __init__(self, intervals: list[float]):
        self.intervals, self.now, self.calls = list(intervals), 0.0, 0

    def perf_counter(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:
            self.now += self.intervals.pop(0) if self.intervals else 0.0
        return self.now


def test_planner_ignores_one_slow_pass(monkeypatch):
    import minivit.devices as devices_module  # the planner times with minivit.devices.timed

    model, budget, config = tiny_vit(), 1000.0, TrainConfig(batch_size=16)
    # 3 passes x 2 steps: the first pass 10x slower (the machine busy for a moment), then the test images
    monkeypatch.setattr(devices_module, "time", StepClock([1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.0]))
    epochs, seconds = plan_epochs(model, TRAIN, TEST, budget, config, steps=2)
    assert seconds == pytest.approx(1.05 * len(TRAIN) * 0.1 / 16)  # the normal step time, not the slow one
    assert epochs == int(budget // seconds)
    monkeypatch.setattr(devices_module, "time", StepClock([1.0] * 4 + [0.1] * 2 + [0.0]))  # slow for 2 passes
    assert plan_epochs(model, TRAIN, TEST, budget, config, steps=2)[1] == pytest.approx(1.05 * len(TRAIN) * 1.0 / 16)


def test_shift_and_flip_test_time_augmentation_averages_ten_views():
    model = tiny_vit().eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)
    images = TEST.images[:6]  # (6, 3, 16, 16) uint8
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))  # zero padding, as the training crops
    views = [padded[..., 1 + dy:17 + dy, 1 + dx:17 + dx] for dy, dx in [(0, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)]]
    with torch.no_grad():
        by_hand = sum(model(normalize(v, mean, std)) + model(normalize(v, mean, std).flip(-1)) for v in views) / 10
    torch.testing.assert_close(predict(model, images, mean, std, tta_flip=True, tta_shift=1, batch_size=4), by_hand)
    plain = predict(model, images, mean, std)
    with torch.no_grad():
        torch.testing.assert_close(plain, model(normalize(images, mean, std)))
    with pytest.raises(ValueError, match="tta_shift"):
        predict(model, images, mean, std, tta_shift=-1)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="epochs"):
        CONFIG.replace(epochs=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(batch_size=100), **OPTIONS)
    with pytest.raises(TypeError, match="TrainConfig"):
        fit(tiny_vit(), TRAIN, TEST, {"epochs": 3})
    with pytest.raises(TypeError, match="epochs"):  # the settings are one TrainConfig, no longer keywords
        fit(tiny_vit(), TRAIN, TEST, epochs=3)
    with pytest.raises(ValueError, match="amp"):
        resolve_amp("float8", torch.device("cpu"))
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16



@pytest.mark.parametrize("field, value, allowed", [
    ("grad_clip", -1.0, "None or a finite number >= 0"),  # a negative clip would turn the gradient around
    ("lr", 0.0, "a finite number > 0"),
    ("lr", -1e-3, "a finite number > 0"),
    ("lr", math.nan, "a finite number > 0"),
    ("lr", math.inf, "a finite number > 0"),
    ("warmup", -0.5, "a finite number >= 0"),
    ("label_smoothing", 1.0, "a finite number in [0, 1)"),
    ("label_smoothing", -0.1, "a finite number in [0, 1)"),
    ("batch_size", 0, "an integer >= 1"),
    ("batch_size", 16.0, "an integer >= 1"),
    ("epochs", 2.5, "an integer >= 1"),
    ("ema_decay", 1.0, "None or a finite number in (0, 1)"),
    ("ema_decay", 0.0, "None or a finite number in (0, 1)"),
    ("weight_decay", -0.05, "a finite number >= 0"),
    ("min_lr_ratio", 1.5, "a finite number in [0, 1]"),
    ("tta_shift", -1, "an integer >= 0"),
    ("eval_every", -1, "an integer >= 0"),
    ("eval_batch_size", 0, "an integer >= 1"),
    ("seed", -3, "an integer >= 0"),
    ("amp", "fp8", "one of 'auto', 'bf16', 'fp16', 'off'"),
    ("compile", "yes", "one of 'auto', True, False"),
    ("tta_flip", 1, "one of False, True"),
    ("progressive", [(16, 0.5), (32, 0.4)],
     "None or (image size, fraction of the epochs) pairs whose fractions add up to 1"),
])
def test_train_config_names_the_field_and_its_range(field, value, allowed):
    expected = rf"TrainConfig\.{field} must be {re.escape(allowed)}, got {re.escape(repr(value))}"
    with pytest.raises(ConfigError, match=expected) as caught:
        TrainConfig(**{field: value})
    assert caught.value.field == field


def test_train_config_normalizes_and_round_trips():
    config = TrainConfig(lr=1, progressive=[[16, 1]], grad_clip=None, ema_decay=0.99)
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.progressive == ((16, 1.0),)
    assert TrainConfig.from_dict(config.to_dict()) == config and config.to_dict()["progressive"] == [[16, 1.0]]
    assert TrainConfig(grad_clip=0).grad_clip == 0.0  # 0: no clipping, as before
    with pytest.raises(ConfigError, match="has no field.*learning_rate"):
        TrainConfig(lr=1e-3).replace(learning_rate=1e-3)
    with pytest.raises(AttributeError):
        config.lr = 2.0  # frozen: config.replace(lr=2.0)


class NaNAtStep(torch.nn.Module):
    """Wraps a layer; its output is NaN at the given training call (counted from 1)."""

    def __init__(self, layer: torch.nn.Module, bad_call: int):
        super().__init__()
        self.layer, self.bad_call, self.calls = layer, bad_call, 0

    def forward(self, x):
        out = self.layer(x)
        if self.training:
            self.calls += 1
            if self.calls == self.bad_call:
                return out * float("nan")
        return out


def test_divergence_stops_at_the_first_nan_loss_and_keeps_the_last_good_checkpoint(tmp_path):
    model = tiny_vit()
    steps = len(TRAIN) // CONFIG.batch_size  # 4 per epoch
    model.head = NaNAtStep(model.head, bad_call=steps + 3)  # epoch 2, step 3
    config = CONFIG.replace(epochs=3, grad_clip=None)
    with pytest.raises(TrainingDiverged) as caught:
        fit(model, TRAIN, TEST, config, checkpoint_dir=tmp_path, **OPTIONS)
    error = caught.value
    assert (error.epoch, error.step) == (2, 3) and math.isnan(error.loss)
    message = str(error)
    assert "epoch 2/3, step 3/4" in message and f"learning rate {error.lr:.3g}" in message
    assert "lower --lr, keep --grad-clip, or use --amp off" in message and "after epoch 1" in message
    checkpoint = read_checkpoint(tmp_path / "last.pt")
    assert checkpoint["meta"]["epoch"] == 1  # the last good epoch; nothing written after the divergence
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    assert not all(torch.isfinite(p).all() for p in model.parameters())  # the NaN reached the weights in memory


def test_stray_temp_files_of_interrupted_writes_are_removed_at_the_next_start(tmp_path, capsys):
    """Issue 13, finding 16: .tmp files of interrupted writes were left behind for ever."""
    (tmp_path / "last.pt.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "history.json.tmp").write_text('{"half":')
    (tmp_path / "notes.tmp").write_text("the user's own file")  # not ours: kept
    fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(epochs=1), checkpoint_dir=tmp_path, **OPTIONS)
    assert not (tmp_path / "last.pt.tmp").exists() and not (tmp_path / "history.json.tmp").exists()
    assert (tmp_path / "notes.tmp").exists() and (tmp_path / "last.pt").is_file()
    assert "removed 2 temp file(s) of an interrupted write" in capsys.readouterr().out


def test_mixing_off_by_default_and_on_changes_the_run():
    assert CONFIG.mixup_alpha == 0 and CONFIG.cutmix_alpha == 0
    plain = fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(epochs=1), **OPTIONS)
    mixed = fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(epochs=1, mixup_alpha=0.4, cutmix_alpha=1.0), **OPTIONS)
    again = fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(epochs=1, mixup_alpha=0.4, cutmix_alpha=1.0), **OPTIONS)
    assert mixed.train_loss != plain.train_loss
    assert mixed.train_loss == again.train_loss and mixed.test_acc == again.test_acc  # reproducible


def test_distillation_trains_both_heads_from_a_frozen_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    before = {key: value.clone() for key, value in teacher.state_dict().items()}
    student = tiny_vit(distill_token=True)
    history = fit(student, TRAIN, TEST, CONFIG.replace(epochs=1), teacher=teacher, **OPTIONS)
    assert math.isfinite(history.train_loss[-1])
    assert all(torch.equal(before[key], value) for key, value in teacher.state_dict().items())  # frozen
    assert student.head_dist.weight.abs().sum() > 0 and student.head.weight.abs().sum() > 0  # both heads learned
    with pytest.raises(ValueError, match="distill_token=True"):
        fit(tiny_vit(), TRAIN, TEST, CONFIG.replace(epochs=1), teacher=teacher, **OPTIONS)


def test_a_checkpoint_from_before_mixup_resumes_and_a_mixed_run_does_not_resume_a_plain_one(tmp_path):
    config = CONFIG.replace(epochs=2)
    fit(tiny_vit(), TRAIN, TEST, config, checkpoint_dir=tmp_path, stop_after=1, **OPTIONS)
    path = tmp_path / "last.pt"
    checkpoint = torch.load(path, weights_only=False)
    for key in ("mixup_alpha", "cutmix_alpha"):  # as written before these fields existed
        del checkpoint["meta"]["train_config"][key]
    torch.save(checkpoint, path)
    history = fit(tiny_vit(), TRAIN, TEST, config, checkpoint_dir=tmp_path, **OPTIONS)
    assert history.epochs == 2
    with pytest.raises(ValueError, match="another recipe.*mixup_alpha"):
        fit(tiny_vit(), TRAIN, TEST, config.replace(mixup_alpha=0.5), checkpoint_dir=tmp_path, **OPTIONS)
