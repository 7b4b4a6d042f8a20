"""The training loop (minivit.train): optimizer groups, schedule, checkpoints and exact resume, DDP."""
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from minivit.data import ImageSet, load_cifar10
from minivit.data.augment import Augment, normalize
from minivit.runtime import seed_everything
from minivit.train import (
    History, confusion_matrix, export_checkpoint, fit, load_checkpoint, load_pretrained_cifar_vit, misclassified,
    param_groups, plan_epochs, predict, resize_batch, resolve_amp, train_sizes, warmup_cosine,
)
from minivit.vit import ViT

TINY = dict(image_size=16, patch_size=4, num_classes=4, dim=32, depth=2, num_heads=2, mlp_dim=64)


def tiny_data(count: int, seed: int) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 4, (count,), generator=generator)
    return ImageSet(images, labels, ("a", "b", "c", "d"))


TRAIN, TEST = tiny_data(64, 0), tiny_data(32, 1)
RECIPE = dict(epochs=3, batch_size=16, lr=3e-3, warmup=0.5, augment=Augment(crop_padding=2), progress=False)


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
        recipe = dict(RECIPE, ema_decay=0.9)
        full = tiny_vit(dropout=0.1)
        full_history = fit(full, TRAIN, TEST, checkpoint_dir=tmp_path / "full", **recipe)

        seed_everything(0)
        interrupted = tiny_vit(dropout=0.1)
        first = fit(interrupted, TRAIN, TEST, checkpoint_dir=tmp_path / "cut", stop_after=1, **recipe)
        assert first.epochs == 1
        torch.manual_seed(123)  # a new session: other RNG state, fresh model
        resumed = tiny_vit(seed=7, dropout=0.1)
        history = fit(resumed, TRAIN, TEST, checkpoint_dir=tmp_path / "cut", **recipe)
    finally:
        torch.use_deterministic_algorithms(False)
    assert history.epochs == 3 and history.test_acc == full_history.test_acc
    assert history.train_loss == full_history.train_loss
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    model, info = load_checkpoint(tmp_path / "cut" / "last.pt")  # rebuilt from the stored config; EMA weights
    assert info["epoch"] == 3 and info["history"].test_acc == history.test_acc
    assert model.config == {**TINY, **dict(dropout=0.1, attn_dropout=0.0, in_channels=3, pool="cls",
                                           pos_embed="learned", norm_eps=1e-6, dynamic_size=False)}


def test_load_checkpoint_checks_architecture_and_file(tmp_path):
    model = tiny_vit()
    fit(model, TRAIN, TEST, checkpoint_dir=tmp_path, **dict(RECIPE, epochs=1))
    rebuilt, info = load_checkpoint(tmp_path / "last.pt")
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(rebuilt(images), model.eval()(images), rtol=0, atol=0)
    assert len(info["mean"]) == 3 and info["classes"] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="holds a ViT"):
        load_checkpoint(tmp_path / "last.pt", model=tiny_vit(dim=48, num_heads=3))
    with pytest.raises(ValueError, match="another recipe"):
        fit(tiny_vit(), TRAIN, TEST, checkpoint_dir=tmp_path, **dict(RECIPE, epochs=2))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a minivit training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    small = export_checkpoint(tmp_path / "last.pt", tmp_path / "small.pt", command="test", test_acc=0.5)
    _, small_info = load_checkpoint(small)
    assert small_info["command"] == "test" and "optimizer" not in torch.load(small, weights_only=True)


def test_shipped_checkpoint_loads_and_names_its_recipe():
    model, info = load_pretrained_cifar_vit()
    assert type(model).__name__ == "ViT" and model.config["image_size"] == 32
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
        history = fit(model, TRAIN, TEST, **dict(RECIPE, epochs=2))
        if rank == 0:
            torch.save({"model": model.state_dict(), "history": history.to_dict()}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_with_two_processes_matches_one_process(tmp_path):
    single = tiny_vit()
    single_history = fit(single, TRAIN, TEST, **dict(RECIPE, epochs=2))
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), out), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    # The gradients agree to float rounding, but Adam divides by sqrt(v): on near-zero gradients that
    # rounding can move a weight by up to ~lr per step. So: every weight within lr/2, the average far closer.
    lr = RECIPE["lr"]
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
    for bad, message in [([(16, 0.5), (32, 0.4)], "add up to 1"), ([(16, -0.5), (32, 1.5)], "positive"),
                         ([16, 32], "pairs")]:
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
    recipe = dict(RECIPE, epochs=4, progressive=[(8, 0.5), (16, 0.5)], eval_every=3)
    history = fit(model, TRAIN, TEST, checkpoint_dir=tmp_path, **recipe)
    steps = len(TRAIN) // RECIPE["batch_size"]
    assert seen == [8] * 2 * steps + [16] * 2 * steps
    assert math.isnan(history.test_acc[0]) and math.isnan(history.test_loss[1])
    assert not math.isnan(history.test_acc[2]) and not math.isnan(history.test_acc[3])  # every 3rd and the last
    _, info = load_checkpoint(tmp_path / "last.pt")
    assert info["recipe"]["progressive"] == [[8, 0.5], [16, 0.5]]
    history.plot()  # skips the untested epochs
    with pytest.raises(ValueError, match="dynamic_size=True"):  # a fixed-size ViT says how to fix it
        fit(tiny_vit(), TRAIN, TEST, **dict(recipe, epochs=2))
    with pytest.raises(ValueError, match="eval_every"):
        fit(tiny_vit(), TRAIN, TEST, **dict(recipe, eval_every=-1))
    only_last = fit(tiny_vit(dynamic_size=True), TRAIN, TEST, **dict(recipe, epochs=3, eval_every=0))
    assert [math.isnan(acc) for acc in only_last.test_acc] == [True, True, False]


def test_planner_fits_the_epochs_into_the_budget_and_leaves_the_model_alone():
    model = tiny_vit(dynamic_size=True)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    epochs, seconds = plan_epochs(model, TRAIN, TEST, 1e6, batch_size=16, augment=Augment(crop_padding=2),
                                  progressive=[(8, 0.5), (16, 0.5)], eval_every=2, steps=2)
    assert seconds > 0 and epochs == int(1e6 // seconds)
    assert plan_epochs(model, TRAIN, TEST, 1e-3, batch_size=16, augment=None, steps=1)[0] == 1  # at least one
    once, _ = plan_epochs(model, TRAIN, TEST, 1e6, batch_size=16, augment=None, eval_every=0, tta_shift=1, steps=2)
    assert once >= 1
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


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
    import minivit.bench as bench_module  # the planner times with minivit.bench.time_steps

    model, budget = tiny_vit(), 1000.0
    # 3 passes x 2 steps: the first pass 10x slower (the machine busy for a moment), then the test images
    monkeypatch.setattr(bench_module, "time", StepClock([1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.0]))
    epochs, seconds = plan_epochs(model, TRAIN, TEST, budget, batch_size=16, augment=None, steps=2)
    assert seconds == pytest.approx(1.05 * len(TRAIN) * 0.1 / 16)  # the normal step time, not the slow one
    assert epochs == int(budget // seconds)
    monkeypatch.setattr(bench_module, "time", StepClock([1.0] * 4 + [0.1] * 2 + [0.0]))  # slow for 2 passes
    assert plan_epochs(model, TRAIN, TEST, budget, batch_size=16, augment=None, steps=2)[1] == pytest.approx(
        1.05 * len(TRAIN) * 1.0 / 16)


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
        fit(tiny_vit(), TRAIN, TEST, **dict(RECIPE, epochs=0))
    with pytest.raises(ValueError, match="fewer than one batch"):
        fit(tiny_vit(), TRAIN, TEST, **dict(RECIPE, batch_size=100))
    with pytest.raises(ValueError, match="amp"):
        resolve_amp("float8", torch.device("cpu"))
    assert resolve_amp("auto", torch.device("cpu")) is None
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
