"""The record of a run, one entry per epoch: what :func:`minivit.train.fit` returns and checkpoints keep."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class History:
    """Per-epoch record of a run: losses, accuracies (0..1), learning rate, wall-clock seconds."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds))

    def append(self, **values: float) -> None:
        for name, value in values.items():
            getattr(self, name).append(float(value))

    def to_dict(self) -> dict[str, list[float]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "History":
        return cls(**{name: [float(v) for v in values.get(name, [])] for name in cls.__dataclass_fields__})

    def __str__(self) -> str:
        if not self.epochs:
            return "History(no epochs)"
        return (f"History({self.epochs} epochs, {self.total_seconds:.0f} s: train loss {self.train_loss[-1]:.3f} "
                f"acc {self.train_acc[-1]:.1%}, test loss {self.test_loss[-1]:.3f} acc {self.test_acc[-1]:.1%})")

    def plot(self, axes=None, label: str = ""):
        """Loss and accuracy curves on two matplotlib axes (created if not given)."""
        import matplotlib.pyplot as plt

        if axes is None:
            _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        epochs = range(1, self.epochs + 1)
        prefix = f"{label} " if label else ""
        # epochs that eval_every skipped hold NaN: plot the tested ones
        tested = [i for i, value in enumerate(self.test_acc) if not math.isnan(value)]
        axes[0].plot(epochs, self.train_loss, "--", label=f"{prefix}train")
        axes[0].plot([i + 1 for i in tested], [self.test_loss[i] for i in tested], "o-", ms=3, label=f"{prefix}test")
        axes[1].plot(epochs, [100 * a for a in self.train_acc], "--", label=f"{prefix}train")
        axes[1].plot([i + 1 for i in tested], [100 * self.test_acc[i] for i in tested], "o-", ms=3,
                     label=f"{prefix}test")
        axes[0].set(title="Loss per epoch", xlabel="epoch", ylabel="cross-entropy (nats)")
        axes[1].set(title="Accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend()
        return axes
