"""One checkpoint format for every minivit model (ViT, SmallCNN, the DETRs), one save and one load.

A checkpoint is a dict of plain values and tensors (``torch.load(..., weights_only=True)`` reads it)::

    format        "minivit/2"
    architecture  "vit", "small_cnn", "detr" (minivit.models.ARCHITECTURES), or None for another module
    config        the architecture's config as a dict (config.to_dict()), or None
    model         the weights to use: the state dict (the moving average when the run kept one)
    meta          what is known about them: epoch, history, train_config, classes, normalization,
                  data, command, test_acc, hardware, metrics, ...
    training      None, or what resuming needs: optimizer, scheduler, scaler, rng, ema_n_averaged,
                  and "model", the optimizer's own weights when ``model`` holds their average

Loading checks a file before it builds anything: a known architecture, a config whose every
field is valid and within sane sizes, a model that fits into ``MAX_MODEL_BYTES``, and weights
whose names and shapes are those of the config (compared on PyTorch's ``meta`` device, which
allocates no memory). A small file cannot make minivit allocate a huge model. Files of the
older formats load with a ``DeprecationWarning`` (:mod:`minivit.train.legacy`).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from minivit.checks import check_finite_weights
from minivit.configs import Config
from minivit.models import ARCHITECTURES, architecture_of, build_from_config, config_from_dict, describe_model
from minivit.train.distributed import unwrap
from minivit.train.history import History
from minivit.train.legacy import upgrade_legacy_checkpoint

FORMAT = "minivit/2"
MAX_MODEL_BYTES = 8 * 2**30  # ViT-L/16 is 1.2 GB, DETR-R50 0.17 GB
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
# the CIFAR-10 ViTs shipped with minivit: "conv", chapter 4's 30-minute `cpu` recipe (vit_cifar_conv); "small",
# the plain vit_cifar_small of the recipe before it (chapters 3, 7 and 9 and their exercises take it apart); and
# "analysis", a deeper plain ViT trained for longer, which chapter 7 analyses
SHIPPED_CIFAR_VITS = {"small": CHECKPOINT_DIR / "vit_cifar_small.pt",
                      "conv": CHECKPOINT_DIR / "vit_cifar_conv.pt",
                      "analysis": CHECKPOINT_DIR / "vit_cifar_analysis.pt"}
SHIPPED_CHECKPOINT = SHIPPED_CIFAR_VITS["small"]
TRAINING_STATE_KEYS = ("model", "optimizer", "scheduler", "scaler", "rng", "ema_n_averaged")


# --------------------------------------------------------------------------- writing
def save_checkpoint(path: str | Path, model: nn.Module, *, weights: Mapping[str, torch.Tensor] | None = None,
                    meta: dict | None = None, training: dict | None = None, config: Config | None = None) -> Path:
    """Write ``model``'s weights (or ``weights`` for it) with its architecture and config, ``meta``
    and the optional ``training`` state. Atomic: a killed run leaves the previous file intact.

    ``config`` is for a model built without one (it must agree with the model's own, if any).
    Weights holding NaN are refused: a diverged run keeps its last good checkpoint.
    """
    architecture, own_config = describe_model(model)
    if config is not None:
        if own_config is not None and own_config != config:
            raise ValueError(f"the config {config} differs from the model's own {own_config}")
        architecture, own_config = architecture_of(config), config
    weights = dict(weights if weights is not None else unwrap(model).state_dict())
    _refuse_nan(weights, path)
    if training is not None and training.get("model") is not None:
        _refuse_nan(training["model"], path)
    checkpoint = {"format": FORMAT, "architecture": architecture,
                  "config": own_config.to_dict() if own_config is not None else None,
                  "model": weights, "meta": dict(meta or {}), "training": training}
    return _atomic_save(checkpoint, Path(path))


def export_checkpoint(source: str | Path, target: str | Path, **meta) -> Path:
    """A small inference copy of a checkpoint: its weights, config and meta (with ``meta`` added), no training state."""
    checkpoint = read_checkpoint(source)
    return _atomic_save({**checkpoint, "meta": {**checkpoint["meta"], **meta}, "training": None}, Path(target))


def upgrade_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Rewrite a checkpoint of an older format in the current one, every recorded value kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        checkpoint = read_checkpoint(source)
    if checkpoint["architecture"] is not None and checkpoint["config"] is not None:  # every field, in order
        checkpoint["config"] = config_from_dict(checkpoint["architecture"], checkpoint["config"]).to_dict()
    return _atomic_save(checkpoint, Path(target))


TEMP_SUFFIX = ".tmp"  # NAME.tmp while NAME is being written; a leftover one is an interrupted write


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(temp_path)``, then rename the temp file over ``path``: a killed run leaves the old file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    write(tmp)
    os.replace(tmp, path)
    return path


def _atomic_save(checkpoint: dict, path: Path) -> Path:
    return write_atomically(path, lambda tmp: torch.save(checkpoint, tmp))


def _refuse_nan(weights: Mapping[str, torch.Tensor], path) -> None:
    check_finite_weights(weights, f"refusing to write {path}", "the previous checkpoint there is kept")


# --------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint at ``path`` as a dict of the current format (older formats upgraded, with a
    ``DeprecationWarning``), its layout checked; the weights are not yet compared with the config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways on other files: UnpicklingError, KeyError, ...
        raise ValueError(f"{path} is not a checkpoint torch can read safely ({type(error).__name__}: {error}); "
                         f"if it is half-written (a run stopped while saving), delete it and resume from the "
                         f"previous checkpoint or re-download it") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a minivit checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    if checkpoint.get("format") != FORMAT:
        checkpoint = {**upgrade_legacy_checkpoint(checkpoint, path), "format": FORMAT}
    _check_layout(checkpoint, path)
    check_finite_weights(checkpoint["model"], f"checkpoint {path}",
                         "it cannot be used; resume from an earlier checkpoint or train again")
    return checkpoint


def _check_layout(checkpoint: dict, path) -> None:
    kinds = {"architecture": (str, type(None)), "config": (dict, type(None)), "model": dict, "meta": dict,
             "training": (dict, type(None))}
    wrong = [key for key, kind in kinds.items() if not isinstance(checkpoint.get(key), kind)]
    if not wrong and checkpoint["architecture"] is not None and checkpoint["architecture"] not in ARCHITECTURES:
        wrong.append(f"architecture {checkpoint['architecture']!r} (minivit knows {', '.join(ARCHITECTURES)})")
    if not wrong and not all(isinstance(t, torch.Tensor) for t in checkpoint["model"].values()):
        wrong.append("model (not all tensors)")
    if wrong:
        raise ValueError(f"{path} is not a valid {FORMAT} checkpoint: bad or missing {', '.join(wrong)}")


def checked_config(checkpoint: dict, path) -> Config:
    """The stored config, once it is valid, sane, of a model under ``MAX_MODEL_BYTES``, and its weights
    fit it; nothing is allocated (the model is sized on the ``meta`` device)."""
    architecture = checkpoint["architecture"]
    if architecture is None or checkpoint["config"] is None:
        raise ValueError(f"checkpoint {path} stores no model config (a module minivit cannot rebuild); "
                         f"pass the model: load_checkpoint(path, model)")
    try:
        config = config_from_dict(architecture, checkpoint["config"])
        config.check_sane()
    except ValueError as error:
        raise ValueError(f"checkpoint {path} stores an invalid {architecture} config: {error}") from None
    with torch.device("meta"):
        skeleton = build_from_config(config)  # shapes only
    size = sum(t.numel() * t.element_size() for t in [*skeleton.parameters(), *skeleton.buffers()])
    if size > MAX_MODEL_BYTES:
        raise ValueError(f"checkpoint {path} asks for a {architecture} model of {size / 1e9:.1f} GB, more than "
                         f"minivit loads ({MAX_MODEL_BYTES / 1e9:.1f} GB); its config: {checkpoint['config']}")
    problems = state_dict_mismatches(skeleton.state_dict(), checkpoint["model"])
    if problems:
        raise ValueError(f"checkpoint {path}: its weights do not fit its own {architecture} config: {problems[:8]}")
    return config


def state_dict_mismatches(expected: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> list[str]:
    """Missing and unexpected keys, and shape differences (``key (stored) vs (expected)``)."""
    problems = [f"missing {key}" for key in expected if key not in weights]
    problems += [f"unexpected {key}" for key in weights if key not in expected]
    problems += [f"{key} {tuple(weights[key].shape)} vs {tuple(expected[key].shape)}"
                 for key in expected if key in weights and weights[key].shape != expected[key].shape]
    return problems


def check_fits(checkpoint: dict, model: nn.Module, path) -> None:
    """The checkpoint holds weights for ``model``: the same architecture and config, if both have one,
    and the same weight names and shapes."""
    architecture, config = describe_model(model)
    stored = checkpoint["architecture"], checkpoint["config"]
    if stored[0] is not None and stored[1] is not None:  # fields added since it was written take their defaults
        with contextlib.suppress(ValueError):
            stored = stored[0], config_from_dict(*stored).to_dict()
    if architecture is not None and stored[0] is not None and stored != (architecture, config.to_dict()):
        raise ValueError(f"checkpoint {path} holds a {stored[0]} with config {stored[1]}, but the model is a "
                         f"{architecture} with config {config.to_dict()}; build the model from the checkpoint "
                         f"(minivit.train.load_checkpoint(path)) or use another checkpoint folder")
    problems = state_dict_mismatches(unwrap(model).state_dict(), checkpoint["model"])
    if problems:
        raise ValueError(f"checkpoint {path} does not fit the model: {problems[:8]}")


def load_checkpoint(path: str | Path, model: nn.Module | None = None, map_location="cpu") -> tuple[nn.Module, dict]:
    """A model and its weights from a checkpoint: ``(model, info)``, the model in eval mode.

    Without ``model`` it is built from the stored architecture and config, once they are checked
    (see the module's docstring). The weights are the evaluated ones (the EMA when the run kept one).
    ``info`` holds ``meta`` (epoch, classes, command, test_acc, metrics, ...), ``architecture`` and
    ``config`` (the config dataclass), ``history`` as a :class:`History`, and the normalization
    ``mean``/``std`` as tensors when recorded. A checkpoint of another architecture raises ``ValueError``.
    """
    checkpoint = read_checkpoint(path, map_location)
    if model is None:
        model = build_from_config(checked_config(checkpoint, path))
    else:
        check_fits(checkpoint, model, path)
    unwrap(model).load_state_dict(checkpoint["model"])
    return model.eval(), checkpoint_info(checkpoint)


class CheckpointInfo(dict):
    """A checkpoint's ``info``: a dict whose missing keys raise a ``KeyError`` that says what is missing
    and how to get it, rather than the bare key."""

    def __missing__(self, key):
        if key in ("mean", "std"):
            raise KeyError(f"the checkpoint records no normalization {key!r}: it was not saved by fit() (which "
                           f"records the training set's statistics); compute them with "
                           f"minivit.data.channel_stats(train_images) or save them in meta['normalization']")
        raise KeyError(f"the checkpoint's info has no {key!r}; it has {', '.join(sorted(self))}")


def checkpoint_info(checkpoint: dict) -> dict:
    """``meta`` with the format, architecture, config (a dataclass), History and normalization tensors."""
    info = CheckpointInfo({**checkpoint["meta"], "format": checkpoint["format"],
                           "architecture": checkpoint["architecture"]})
    info["config"] = (config_from_dict(checkpoint["architecture"], checkpoint["config"])
                      if checkpoint["architecture"] is not None and checkpoint["config"] is not None else None)
    if "history" in info:
        info["history"] = History.from_dict(info["history"])
    if "normalization" in info:
        info["mean"] = torch.tensor(info["normalization"]["mean"])
        info["std"] = torch.tensor(info["normalization"]["std"])
        mean, std = info["mean"], info["std"]
        if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all()) and bool((std > 0).all())):
            raise ValueError(f"the checkpoint's normalization is unusable (mean {info['mean'].tolist()}, std "
                             f"{info['std'].tolist()}: each must be finite, std > 0); recompute it with "
                             f"minivit.data.channel_stats(train_images)")
    return info


def load_pretrained_cifar_vit(which: str = "small", map_location="cpu") -> tuple[nn.Module, dict]:
    """A CIFAR-10 ViT shipped with minivit: ``(model, info)``. ``which``: ``"conv"`` (chapter 4's ``cpu``
    recipe: ``vit_cifar_conv``), ``"small"`` (the plain ``vit_cifar_small`` of the recipe before it, which
    chapters 3, 7 and 9 take apart) or ``"analysis"`` (deeper and trained longer: chapter 7);
    ``info["history"]`` holds its curves."""
    if which not in SHIPPED_CIFAR_VITS:
        raise ValueError(f"no shipped CIFAR-10 ViT called {which!r}; choose one of {sorted(SHIPPED_CIFAR_VITS)}")
    path = SHIPPED_CIFAR_VITS[which]
    if not path.is_file():
        raise FileNotFoundError(f"the shipped checkpoint {path.name} is missing from the package; "
                                f"reinstall minivit or train one with `python -m minivit.train`")
    return load_checkpoint(path, map_location=map_location)
