"""Chapter 4's comparisons: models at an equal wall-clock budget over seeds, and the classes most confused."""
import statistics
import time

import pytest
import torch

from minivit.data import ImageSet
from minivit.data.augment import Augment
from minivit.train import BudgetComparison, BudgetRun, History, TrainConfig, compare_at_budget, top_confusions
from minivit.vit import ViT

TINY = dict(image_size=16, patch_size=4, num_classes=4, dim=16, depth=1, num_heads=2, mlp_dim=32)


def tiny_data(count: int, seed: int) -> ImageSet:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 4, (count,), generator=generator)
    return ImageSet(images, labels, ("a", "b", "c", "d"))


TRAIN, TEST = tiny_data(32, 0), tiny_data(16, 1)
CONFIG = TrainConfig(batch_size=16, lr=3e-3, warmup=0.5)


class Slow(torch.nn.Module):
    """A tiny ViT that sleeps in every forward pass: an epoch that costs more wall-clock time."""

    def __init__(self, seconds: float):
        super().__init__()
        self.vit, self.seconds = ViT(**TINY), seconds

    def forward(self, images):
        time.sleep(self.seconds)
        return self.vit(images)


def test_equal_budget_gives_the_slower_model_fewer_epochs_and_every_seed_its_run():
    budget = 2.4
    comparison = compare_at_budget({"fast": lambda: ViT(**TINY), "slow": lambda: Slow(0.6)}, TRAIN, TEST, CONFIG,
                                   budget, seeds=(0, 1), augment=Augment(crop_padding=2), planner_steps=1,
                                   progress=False)
    assert comparison.names == ["fast", "slow"]
    assert [(run.name, run.seed) for run in comparison.runs] == [("fast", 0), ("fast", 1), ("slow", 0), ("slow", 1)]
    epochs = {run.name: run.epochs for run in comparison.runs}
    assert epochs["slow"] == 1  # one slow epoch (>= 3 forwards of 0.6 s) is more than half the budget
    assert epochs["fast"] >= epochs["slow"]  # how many more depends on the machine's load while planning
    for run in comparison.runs:
        assert run.history.epochs == run.epochs and run.test_acc == run.history.test_acc[-1]
        assert run.seconds > 0
    slow_runs = [run for run in comparison.runs if run.name == "slow"]
    # each slow epoch sleeps through 2 training steps and 1 test batch at least: the plan respects that cost
    assert all(run.seconds >= run.epochs * 3 * 0.6 for run in slow_runs)
    assert "fast" in comparison.table() and "slow" in comparison.table()


def test_each_model_is_planned_once_for_the_budget_and_every_seed_trains_that_many_epochs(monkeypatch):
    import minivit.train.compare as compare_module

    planned = []

    def fake_plan(model, train_set, test_set, budget_seconds, config, **options):
        planned.append((type(model).__name__, budget_seconds))
        return (4 if isinstance(model, ViT) else 2), 0.1  # (epochs, seconds per epoch)

    monkeypatch.setattr(compare_module, "plan_epochs", fake_plan)
    comparison = compare_at_budget({"vit": lambda: ViT(**TINY), "slow": lambda: Slow(0.0)}, TRAIN, TEST,
                                   CONFIG, 7.5, seeds=(0, 1, 2), progress=False)
    assert planned == [("ViT", 7.5), ("Slow", 7.5)]
    assert [(run.name, run.epochs, run.history.epochs) for run in comparison.runs] == (
        [("vit", 4, 4)] * 3 + [("slow", 2, 2)] * 3)
    assert [run.seed for run in comparison.runs] == [0, 1, 2, 0, 1, 2]


def test_the_seed_sets_the_run():
    comparison = compare_at_budget({"vit": lambda: ViT(**TINY)}, TRAIN, TEST, CONFIG, 0.05, seeds=(3, 3, 4),
                                   planner_steps=1, progress=False)
    same_a, same_b, other = (run.history.train_loss for run in comparison.runs)
    assert same_a == same_b
    assert same_a != other


def runs_of(accuracies: dict[str, list[float]]) -> list[BudgetRun]:
    return [BudgetRun(name, seed, 2, 10.0, acc, acc, History()) for name, values in accuracies.items()
            for seed, acc in enumerate(values)]


def test_mean_std_and_conclusion_follow_the_numbers():
    clear = BudgetComparison(30, runs_of({"ViT": [0.30, 0.32, 0.31], "CNN": [0.40, 0.42, 0.41]}))
    assert clear.mean_std("CNN") == pytest.approx((0.41, statistics.stdev([0.40, 0.42, 0.41])))
    assert clear.conclusion().startswith("At 30 s per run, CNN is ahead by 10.0 points")
    assert "clear difference" in clear.conclusion()
    overlapping = BudgetComparison(30, runs_of({"ViT": [0.30, 0.36, 0.31], "CNN": [0.35, 0.33, 0.34]}))
    assert "CNN is ahead by 1.7 points" in overlapping.conclusion()
    assert "no clear winner" in overlapping.conclusion()
    assert "Caution" not in clear.conclusion()  # every run took 10 s of the 30-s budget
    overrun = BudgetComparison(5, runs_of({"ViT": [0.30, 0.32], "CNN": [0.40, 0.42]}))
    assert "Caution: runs took up to 10 s against the budget of 5 s" in overrun.conclusion()
    assert BudgetComparison(30, runs_of({"ViT": [0.3]})).mean_std("ViT") == (0.3, 0.0)
    with pytest.raises(ValueError, match="two models"):
        BudgetComparison(30, runs_of({"ViT": [0.3]})).conclusion()
    with pytest.raises(KeyError, match="CNN"):
        clear.mean_std("ResNet")


@pytest.mark.parametrize("bad, message", [(dict(models={}), "models is empty"),
                                          (dict(budget_seconds=0), "budget_seconds must be > 0"),
                                          (dict(seeds=()), "seeds is empty")])
def test_compare_at_budget_rejects_bad_arguments(bad, message):
    arguments = dict(models={"vit": lambda: ViT(**TINY)}, train_set=TRAIN, test_set=TEST, config=CONFIG,
                     budget_seconds=1.0, seeds=(0,))
    with pytest.raises(ValueError, match=message):
        compare_at_budget(**{**arguments, **bad})


def test_top_confusions_counts_both_directions():
    matrix = torch.tensor([[9, 1, 0],
                           [4, 8, 2],
                           [0, 3, 7]])  # rows: true class, columns: predicted
    assert top_confusions(matrix, ["cat", "dog", "car"], count=2) == [("cat", "dog", 5), ("dog", "car", 5)]
    assert top_confusions(matrix, ["cat", "dog", "car"], count=5) == [("cat", "dog", 5), ("dog", "car", 5)]
    with pytest.raises(ValueError, match="matrix must be"):
        top_confusions(matrix, ["cat", "dog"])
