"""Run profiles, seeds, devices and the data folder: what every notebook sets first.

The profile (``MINIVIT_PROFILE``) changes sizes and budgets, never the code path:

* ``smoke``: CI, tiny subsets and a few steps, every notebook in seconds;
* ``cpu``:   a learner without a GPU, a chapter in minutes;
* ``gpu``:   Colab or a workstation, the full recipe.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

PROFILES = ("smoke", "cpu", "gpu")
T = TypeVar("T")


def get_profile() -> str:
    """The active run profile: ``$MINIVIT_PROFILE``, else ``gpu`` with CUDA, else ``cpu``."""
    name = os.environ.get("MINIVIT_PROFILE", "").strip().lower()
    if not name:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(
            f"unknown MINIVIT_PROFILE {name!r}; choose one of {', '.join(PROFILES)} "
            f"(for example: MINIVIT_PROFILE=cpu jupyter lab)"
        )
    return name


def by_profile(*, smoke: T, cpu: T, gpu: T, profile: str | None = None) -> T:
    """Pick the value for the active profile, e.g. ``epochs = by_profile(smoke=1, cpu=10, gpu=50)``."""
    profile = profile or get_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[profile]


def seed_everything(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: ``prefer`` if given, else CUDA, then Apple's MPS, then the CPU."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def data_dir() -> Path:
    """Where data sets and downloads go: ``$MINIVIT_DATA``, else the repository's ``data/``."""
    env = os.environ.get("MINIVIT_DATA")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def describe() -> str:
    """One line for a notebook's first cell: profile, device, versions."""
    return (
        f"minivit profile={get_profile()} device={get_device()} "
        f"torch={torch.__version__} threads={torch.get_num_threads()}"
    )
