"""Chapter 4: training a classifier, from the notebook or the command line.

    from minivit.train import TrainConfig, fit
    history = fit(model, train_set, test_set, TrainConfig(epochs=10, batch_size=256, lr=2e-3))

    python -m minivit.train --config vit_cifar_small --profile cpu --out runs/cpu

=============  ==================================================================
config.py      TrainConfig (how fit trains) and DataConfig (what the CLI loads)
loop.py        fit: the epochs, the steps, divergence detection, resume
schedule.py    AdamW groups, warmup + cosine, progressive resizing
evaluate.py    predict (with test-time augmentation), evaluate, confusion matrix, top confusions
compare.py     compare_at_budget: models at an equal wall-clock budget over several seeds
history.py     History: per-epoch losses, accuracies, learning rate, seconds
checkpoint.py  the one checkpoint format: save, load (validated), export
legacy.py      older checkpoint formats, read with a DeprecationWarning
recipes.py     the smoke / cpu / gpu recipes
planner.py     plan_epochs: how many epochs fit into a time budget
distributed.py rank, world size and device under torchrun
__main__.py    the command line, its flags generated from the config fields
=============  ==================================================================
"""
from minivit.configs import ConfigError
from minivit.train.checkpoint import (
    export_checkpoint,
    load_checkpoint,
    load_pretrained_cifar_vit,
    read_checkpoint,
    save_checkpoint,
    upgrade_checkpoint,
)
from minivit.train.compare import BudgetComparison, BudgetRun, compare_at_budget
from minivit.train.config import DataConfig, TrainConfig
from minivit.train.evaluate import confusion_matrix, evaluate, misclassified, predict, top_confusions
from minivit.train.history import History
from minivit.train.loop import TrainingDiverged, fit, resolve_amp
from minivit.train.planner import plan_epochs
from minivit.train.recipes import RECIPES, Recipe
from minivit.train.schedule import check_progressive, param_groups, resize_batch, train_sizes, warmup_cosine

__all__ = [
    "RECIPES",
    "BudgetComparison",
    "BudgetRun",
    "ConfigError",
    "DataConfig",
    "History",
    "Recipe",
    "TrainConfig",
    "TrainingDiverged",
    "check_progressive",
    "compare_at_budget",
    "confusion_matrix",
    "evaluate",
    "export_checkpoint",
    "fit",
    "load_checkpoint",
    "load_pretrained_cifar_vit",
    "misclassified",
    "param_groups",
    "plan_epochs",
    "predict",
    "read_checkpoint",
    "resize_batch",
    "resolve_amp",
    "save_checkpoint",
    "top_confusions",
    "train_sizes",
    "upgrade_checkpoint",
    "warmup_cosine",
]
