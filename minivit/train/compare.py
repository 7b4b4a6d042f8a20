"""Compare models at an equal wall-clock budget over several seeds (chapter 4: ViT vs CNN).

    comparison = compare_at_budget({"ViT": lambda: build_vit("vit_cifar_small"),
                                    "CNN": lambda: SmallCNN(width=44)},
                                   train_set, test_set, TrainConfig(lr=2e-3), budget_seconds=45, seeds=(0, 1, 2))
    print(comparison.table())
    print(comparison.conclusion())

Equal epochs favour the model with the cheaper epoch; an equal budget asks which model learns more
in the same time. :func:`~minivit.train.plan_epochs` measures each model on this machine and picks
its number of epochs for the budget (once per model: every seed trains as many epochs), and every
seed's run is timed, so the table shows whether the budget was kept.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from minivit.data.augment import Augment
from minivit.data.cifar10 import ImageSet
from minivit.runtime import seed_everything
from minivit.train.config import TrainConfig
from minivit.train.history import History
from minivit.train.loop import DEFAULT_AUGMENT, fit
from minivit.train.planner import plan_epochs

OVERRUN = 1.25  # a run longer than this times the budget makes the conclusion say so


@dataclass
class BudgetRun:
    """One model trained with one seed: epochs planned for the budget, wall-clock seconds, final accuracies."""

    name: str
    seed: int
    epochs: int
    seconds: float
    train_acc: float
    test_acc: float
    history: History = field(repr=False)


@dataclass
class BudgetComparison:
    """The runs of :func:`compare_at_budget`, with the per-model mean and standard deviation over the seeds."""

    budget_seconds: float
    runs: list[BudgetRun]

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(run.name for run in self.runs))

    def test_accuracies(self, name: str) -> list[float]:
        return [run.test_acc for run in self.runs if run.name == name]

    def mean_std(self, name: str) -> tuple[float, float]:
        """Mean and sample standard deviation of the test accuracy over the seeds (std 0 for one seed)."""
        values = self.test_accuracies(name)
        if not values:
            raise KeyError(f"no runs of {name!r}; the models are {self.names}")
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def table(self) -> str:
        """One line per model: epochs, seconds per run, test accuracy of each seed and mean +- std."""
        lines = [f"{'model':22s} {'epochs':>6s} {'s per run':>9s}  {'test accuracy per seed':24s} {'mean +- std':>14s}"]
        for name in self.names:
            runs = [run for run in self.runs if run.name == name]
            mean, std = self.mean_std(name)
            per_seed = ", ".join(f"{run.test_acc:.1%}" for run in runs)
            lines.append(f"{name:22s} {runs[0].epochs:6d} {statistics.mean(r.seconds for r in runs):9.0f}  "
                         f"{per_seed:24s} {100 * mean:6.1f} +- {100 * std:4.1f}")
        return "\n".join(lines)

    def conclusion(self) -> str:
        """What the numbers support: a winner only if its worst seed beat every seed of the others; a caution
        when a run took more than 1.25 times the budget."""
        if len(self.names) < 2:
            raise ValueError(f"a conclusion needs two models or more, got {self.names}")
        ranked = sorted(self.names, key=lambda name: self.mean_std(name)[0], reverse=True)
        best, runner_up = ranked[0], ranked[1]
        gap = 100 * (self.mean_std(best)[0] - self.mean_std(runner_up)[0])
        seeds = len(self.test_accuracies(best))
        if min(self.test_accuracies(best)) > max(acc for name in ranked[1:] for acc in self.test_accuracies(name)):
            verdict = (f"At {self.budget_seconds:g} s per run, {best} is ahead by {gap:.1f} points on average, and "
                       f"its worst of {seeds} seeds beat every run of the other model(s): a clear difference at this "
                       f"budget and data size.")
        else:
            verdict = (f"At {self.budget_seconds:g} s per run, {best} is ahead by {gap:.1f} points on average, but "
                       f"the runs of different seeds overlap: no clear winner at this budget with {seeds} seeds.")
        longest = max(run.seconds for run in self.runs)
        if longest > OVERRUN * self.budget_seconds:
            verdict += (f" Caution: runs took up to {longest:.0f} s against the budget of {self.budget_seconds:g} s "
                        f"(every model trains at least one epoch, and a machine busier than when the planner "
                        f"measured it slows every run), so compare the seconds per run too.")
        return verdict


def compare_at_budget(models: dict[str, Callable[[], nn.Module]], train_set: ImageSet, test_set: ImageSet,
                      config: TrainConfig, budget_seconds: float, seeds: Sequence[int] = (0, 1, 2), *,
                      augment: Augment | None = DEFAULT_AUGMENT, device=None, planner_steps: int = 2,
                      progress: bool = True) -> BudgetComparison:
    """Train each of ``models`` (name -> function building a fresh model) once per seed with ``config``,
    for as many epochs as :func:`plan_epochs` says fit into ``budget_seconds`` for that model.

    The seed sets the initial weights (:func:`minivit.seed_everything`) and the batch order and
    augmentation (``TrainConfig.seed``). Warmup is capped at a fifth of the planned epochs, as in
    the command line's time budget. ``progress`` prints one line per run.
    """
    if not models:
        raise ValueError("models is empty: give {name: function returning a fresh model}, e.g. "
                         "{'ViT': lambda: build_vit('vit_cifar_small')}")
    if budget_seconds <= 0:
        raise ValueError(f"budget_seconds must be > 0, got {budget_seconds}")
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. seeds=(0, 1, 2)")
    runs = []
    for name, build in models.items():
        seed_everything(seeds[0])
        epochs, epoch_seconds = plan_epochs(build(), train_set, test_set, budget_seconds, config, augment=augment,
                                            device=device, steps=planner_steps)
        if progress:
            print(f"{name}: measured ~{epoch_seconds:.1f} s per epoch -> {epochs} epoch(s) in {budget_seconds:g} s",
                  flush=True)
        run_config = config.replace(epochs=epochs, warmup=min(config.warmup, epochs / 5))
        for seed in seeds:
            seed_everything(seed)
            model = build()
            started = time.perf_counter()
            history = fit(model, train_set, test_set, run_config.replace(seed=seed), augment=augment, device=device,
                          progress=False)
            run = BudgetRun(name, seed, epochs, time.perf_counter() - started, history.train_acc[-1],
                            history.test_acc[-1], history)
            runs.append(run)
            if progress:
                print(f"  seed {seed}: {epochs} epoch(s) in {run.seconds:.0f} s, test accuracy {run.test_acc:.1%}",
                      flush=True)
    return BudgetComparison(budget_seconds, runs)
