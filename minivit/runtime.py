"""Run profiles, seeds, devices and the data folder: what every notebook sets first.

The profile (``MINIVIT_PROFILE``) changes sizes and budgets, never the code path; the
device (``MINIVIT_DEVICE``, :mod:`minivit.devices`) is chosen independently of it, so the
``smoke`` sizes run on a GPU too. :func:`setup` is each notebook's first call:

* ``smoke``: CI, tiny subsets and a few steps, every notebook in seconds;
* ``cpu``:   a learner without a GPU, a chapter in minutes;
* ``gpu``:   Colab or a workstation, the full recipe.
"""
from __future__ import annotations

import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from minivit.devices import choose_precision, device_reason, get_device, use_device

PROFILES = ("smoke", "cpu", "gpu")
T = TypeVar("T")


def get_profile() -> str:
    """The active run profile: ``$MINIVIT_PROFILE``, else ``gpu`` when the device is a CUDA GPU, else ``cpu``."""
    name = os.environ.get("MINIVIT_PROFILE", "").strip().lower()
    if not name:
        return "gpu" if get_device().type == "cuda" else "cpu"
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


def _checkout_root(package_file: str | Path) -> Path | None:
    """The repository checkout that holds the minivit package at ``package_file``, or None.

    A checkout (an editable install, or running from the repository) is recognised by the
    package's parent folder holding ``pyproject.toml`` and ``notebooks/``; a normal install
    puts the package in ``site-packages``, which holds neither.
    """
    root = Path(package_file).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def _choose_data_dir(
    package_file: str | Path = __file__,
    environ: Mapping[str, str] | None = None,
    modules: Mapping[str, object] | None = None,
) -> tuple[Path, str]:
    """The data folder and why it was chosen; the rule of :func:`data_dir`, testable.

    ``package_file`` is a file of the minivit package (this module by default), ``environ``
    and ``modules`` stand for ``os.environ`` and ``sys.modules``.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if environ.get("MINIVIT_DATA"):
        return Path(environ["MINIVIT_DATA"]).expanduser(), "MINIVIT_DATA is set"
    root = _checkout_root(package_file)
    if root is not None:
        return root / "data", "minivit is imported from a repository checkout, which keeps data in its data/ folder"
    if "google.colab" in modules or environ.get("COLAB_RELEASE_TAG"):
        return Path("/content/data"), "this is Colab; files there last as long as the runtime"
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "minivit", (
            "minivit is an installed package, so data goes to the user cache folder $XDG_CACHE_HOME/minivit"
        )
    return Path("~/.cache/minivit").expanduser(), (
        "minivit is an installed package, so data goes to the user cache folder ~/.cache/minivit"
    )


def data_dir() -> Path:
    """Where data sets, downloads and caches go (created if missing); never inside ``site-packages``.

    1. ``$MINIVIT_DATA`` when it is set;
    2. the checkout's ``data/`` when minivit is imported from a repository checkout
       (an editable install, or running from the repository);
    3. ``/content/data`` on Colab;
    4. else the user cache folder, ``$XDG_CACHE_HOME/minivit`` or ``~/.cache/minivit``.

    :func:`data_dir_reason` says which rule chose it.
    """
    path, _ = _choose_data_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir_reason() -> str:
    """One line for a notebook: where data goes and why, e.g. ``data goes to ../data (because ...)``."""
    path, reason = _choose_data_dir()
    return f"data goes to {display_path(path)} (because {reason})"


def display_path(path: str | Path) -> str:
    """``path`` as a notebook should print it, without this machine's absolute paths where possible.

    Relative to the current folder when inside it or beside it (``data/...``, ``../data/...``),
    else ``~/...`` inside the home folder, else relative when two levels up at most, else
    absolute (for example ``/content/data`` on Colab, when run outside ``/content``).
    """
    path = Path(path).expanduser().absolute()
    cwd = Path.cwd()
    if path == cwd or cwd in path.parents:
        return path.relative_to(cwd).as_posix() or "."
    common = Path(os.path.commonpath([path, cwd]))
    relative = Path(os.path.relpath(path, cwd))
    ups = relative.parts.count("..") if common != Path(common.anchor) else 99
    home = Path.home()
    if ups <= 1:
        return relative.as_posix()
    if home in path.parents:
        return "~/" + path.relative_to(home).as_posix()
    return relative.as_posix() if ups <= 2 else path.as_posix()


def describe() -> str:
    """One line for a notebook's first cell: profile, device, versions."""
    return (
        f"minivit profile={get_profile()} device={get_device()} "
        f"torch={torch.__version__} threads={torch.get_num_threads()}"
    )


def set_profile(profile: str | None) -> str:
    """Make ``profile`` the active one (through ``$MINIVIT_PROFILE``); ``None`` keeps the environment's."""
    if profile is not None:
        name = str(profile).strip().lower()
        if name not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)} "
                             f"(or None for the default: gpu with a GPU, else cpu)")
        os.environ["MINIVIT_PROFILE"] = name
    return get_profile()


def profile_reason() -> str:
    if os.environ.get("MINIVIT_PROFILE", "").strip():
        return "set by MINIVIT_PROFILE (or PROFILE in the notebook)"
    return "the default for this device: gpu on a CUDA GPU, else cpu"


def setup(profile: str | None = None, device: str | None = None, seed: int | None = 0, verbose: bool = True) -> None:
    """A notebook's first call: pick the profile and the device, seed every generator, and say
    (one line each) what was picked and why, before any long cell (``verbose=False``: silently).

    ``profile``: ``smoke``, ``cpu``, ``gpu`` or None (``$MINIVIT_PROFILE``, else ``gpu`` on a CUDA
    GPU, else ``cpu``). ``device``: ``cpu``, ``cuda``, ``mps`` or None (``$MINIVIT_DEVICE``, else
    the best one found). They are independent: ``profile="smoke", device="cuda"`` is a quick GPU check.
    """
    if device is not None:
        use_device(device)
    chosen_device = get_device()
    chosen_profile = set_profile(profile)
    if seed is not None:
        seed_everything(seed)
    lines = [
        f"minivit {_version()}: profile {chosen_profile!r} ({profile_reason()})",
        f"device {chosen_device} ({device_reason()})",
        f"training in {choose_precision(chosen_device)}",
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {data_dir_reason()}",
    ]
    if verbose:
        print("\n".join(lines))


def _version() -> str:
    from minivit import __version__

    return __version__

