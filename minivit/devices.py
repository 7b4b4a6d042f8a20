"""Devices and precision: every decision about *where* and *in which number format* to compute.

Notebooks never decide these themselves, so the same cell runs on a laptop CPU, a Colab T4
and an H100:

* :func:`get_device` picks the device: ``$MINIVIT_DEVICE`` (``cpu``, ``cuda``, ``mps``), else
  CUDA, then Apple's MPS, then the CPU; :func:`device_reason` says why in one line.
* :func:`to_device` moves a tensor, a module, or a dict/list/tuple of them to that device.
* :func:`choose_precision` picks the mixed precision and whether to ``torch.compile`` from the
  hardware: fp32 on a CPU; fp16 autocast with a ``GradScaler`` on GPUs without bf16 units
  (compute capability below 8.0, e.g. a T4, sm_75); bf16 on an A100, H100 or H200 (8.0 and up).
  ``torch.cuda.is_bf16_supported()`` answers True on a T4 unless asked with
  ``including_emulation=False``: emulated bf16 is slow, and ``torch.compile`` of bf16 fails on sm_75.
* :func:`autocast` is the one autocast context of the package (a no-op for fp32).
* :func:`timed` is its one timer: it waits for the device's queued work, so GPU time is counted.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
BF16_MIN_CAPABILITY = (8, 0)  # Ampere: the first NVIDIA GPUs with bf16 tensor cores
COMPILE_MIN_CAPABILITY = (7, 0)  # Triton, torch.compile's GPU code generator, needs Volta or newer


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def _requested_device() -> str | None:
    name = os.environ.get("MINIVIT_DEVICE", "").strip().lower()
    return name or None


def _check_available(device: torch.device, source: str) -> torch.device:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{source} asks for a CUDA GPU, but torch sees none (torch.cuda.is_available() is False). "
            f"On Colab choose Runtime > Change runtime type > GPU; elsewhere use 'cpu' "
            f"(or leave the device unset to take the best one found)")
    if device.type == "mps" and not _mps_available():
        raise RuntimeError(f"{source} asks for Apple's MPS, which this machine does not have; use 'cpu' or 'cuda'")
    return device


def _parse_device(value: str | torch.device, source: str) -> torch.device:
    """``value`` as a device minivit can use here: a known type (``meta`` too: shapes only, for tests),
    available on this machine; a ``ValueError``/``TypeError`` naming ``source`` otherwise."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text.split(":")[0] == "gpu":
            raise ValueError(f"{source}={value!r}: PyTorch calls an NVIDIA GPU 'cuda'; use 'cuda' (or 'cpu', 'mps')")
        try:
            value = torch.device(text)
        except RuntimeError:
            raise ValueError(f"{source}={value!r} is not a device; choose one of {', '.join(DEVICE_TYPES)} "
                             f"(e.g. 'cuda' or 'cuda:0'), or None for the best one found") from None
    if not isinstance(value, torch.device):
        raise TypeError(f"{source} must be a device name such as 'cpu' or 'cuda', a torch.device or None, "
                        f"got {type(value).__name__} {value!r}")
    if value.type not in (*DEVICE_TYPES, "meta"):
        raise ValueError(f"{source}={str(value)!r}: minivit runs on {', '.join(DEVICE_TYPES)}, not {value.type}")
    return _check_available(value, f"{source} {str(value)!r}")


_forced_device: torch.device | None = None  # set only by minivit.testing.fake_accelerator()


def _choose_device() -> tuple[torch.device, str]:
    """The default device and why: the fake accelerator in tests, ``$MINIVIT_DEVICE``, CUDA, MPS, the CPU."""
    if _forced_device is not None:
        return _forced_device, "the fake accelerator of minivit.testing"
    requested = _requested_device()
    if requested is not None:
        if requested.split(":")[0] not in DEVICE_TYPES:
            raise ValueError(f"unknown MINIVIT_DEVICE {requested!r}; choose one of {', '.join(DEVICE_TYPES)} "
                             f"(for example: MINIVIT_DEVICE=cpu), or unset it to take the best one found")
        device = _parse_device(requested, "MINIVIT_DEVICE")
        return device, "set by MINIVIT_DEVICE (or DEVICE in the notebook)"
    if torch.cuda.is_available():
        return torch.device("cuda"), f"a CUDA GPU was found: {torch.cuda.get_device_name()}"
    if _mps_available():
        return torch.device("mps"), "Apple's MPS GPU was found"
    return torch.device("cpu"), "no GPU was found"


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``prefer`` if given, else ``$MINIVIT_DEVICE``, else CUDA, then MPS, then the CPU."""
    return _parse_device(prefer, "device") if prefer is not None else _choose_device()[0]


def device_reason() -> str:
    """Why :func:`get_device` picks what it picks, in a few words."""
    return _choose_device()[1]


def use_device(device: str | torch.device | None) -> torch.device:
    """Make ``device`` the default of :func:`get_device` (through ``$MINIVIT_DEVICE``); ``None`` clears it."""
    if device is None:
        os.environ.pop("MINIVIT_DEVICE", None)
        return get_device()
    device = _parse_device(device, "device")
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"unknown device {str(device)!r}; choose one of {', '.join(DEVICE_TYPES)}")
    os.environ["MINIVIT_DEVICE"] = str(device)
    return device


def to_device(obj: Any, device: str | torch.device | None = None, non_blocking: bool = False) -> Any:
    """``obj`` on ``device`` (default: :func:`get_device`): a tensor, a module (moved in place and
    returned), or a dict, list or tuple of them (a new container); anything else unchanged."""
    device = get_device(device)
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, torch.nn.Module):
        return obj.to(device)
    if isinstance(obj, dict):
        return {key: to_device(value, device, non_blocking) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        moved = [to_device(value, device, non_blocking) for value in obj]
        return type(obj)(*moved) if hasattr(obj, "_fields") else type(obj)(moved)  # namedtuples too
    return obj


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module without any."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- precision
@dataclass(frozen=True)
class Precision:
    """How to compute on a device: the autocast ``dtype`` (None: fp32), whether a ``GradScaler``
    guards fp16 gradients, whether to ``torch.compile``, and why, in words."""

    dtype: torch.dtype | None
    grad_scaler: bool
    compile: bool
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def __str__(self) -> str:
        number_format = "fp32" if self.dtype is None else f"{self.name} autocast"
        scaler = " + GradScaler" if self.grad_scaler else ""
        compiled = "torch.compile on" if self.compile else "torch.compile off"
        return f"{number_format}{scaler}, {compiled} ({self.reason})"


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device, e.g. (7, 5) for a T4, (9, 0) for an H100."""
    return tuple(torch.cuda.get_device_capability(device))


def _bf16_in_hardware(device: torch.device) -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation (and answers for the hardware)
        return torch.cuda.is_bf16_supported()


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def choose_precision(device: str | torch.device, amp: str = "auto", compile: bool | str = "auto") -> Precision:
    """The precision and compile setting for ``device``.

    ``amp``: ``auto`` (from the hardware), ``bf16``, ``fp16`` or ``off``. ``compile``: ``auto``
    (on CUDA GPUs of compute capability 7.0 or newer with Triton), True or False. Asking for
    bf16 on a GPU without bf16 units is an error that names the fix (``fp16`` or ``auto``).
    """
    device = torch.device(device)
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if compile not in ("auto", True, False):
        raise ValueError(f"compile must be 'auto', True or False, got {compile!r}")
    if device.type != "cuda":
        where = "the CPU" if device.type == "cpu" else f"the {device.type} device"
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        reason = f"{where}: mixed precision pays only on CUDA GPUs" if amp == "auto" else f"{where}, amp={amp!r} asked"
        return Precision(dtype, False, compile is True, reason)

    capability = cuda_capability(device)
    gpu = f"{torch.cuda.get_device_name(device)}, compute capability {capability[0]}.{capability[1]}"
    has_bf16 = capability >= BF16_MIN_CAPABILITY and _bf16_in_hardware(device)
    if amp == "bf16" and not has_bf16:
        raise ValueError(f"bf16 asked on {gpu}, which has no bf16 units (it would be emulated, slowly, and "
                         f"torch.compile fails on it); use amp='fp16' (with a GradScaler) or amp='auto'")
    if amp == "auto":
        amp = "bf16" if has_bf16 else "fp16"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    can_compile = capability >= COMPILE_MIN_CAPABILITY and _has_triton()
    if compile is True and not can_compile:
        raise ValueError(f"torch.compile asked on {gpu}, where it does not work (needs compute capability "
                         f">= 7.0 and the triton package); use compile=False or 'auto'")
    use_compile = can_compile if compile == "auto" else compile
    units = "has bf16 units" if has_bf16 else "no bf16 units"
    return Precision(dtype, dtype == torch.float16, use_compile, f"{gpu}: {units}")


def autocast(device: str | torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op context for ``dtype=None`` (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (GPUs run asynchronously); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------- timing
class Stopwatch:
    """Seconds since :meth:`start`: ``seconds`` reads the running time, or the total once stopped."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stopped: float | None = None

    @classmethod
    def start(cls) -> "Stopwatch":
        return cls()

    def stop(self) -> float:
        self.stopped = time.perf_counter()
        return self.seconds

    @property
    def seconds(self) -> float:
        end = self.stopped if self.stopped is not None else time.perf_counter()
        return end - self.started


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` threads in torch's CPU thread pool (None: as it is), then restore the
    setting. One thread gives steadier timings on a busy machine, and is faster for tiny tensors (one
    image, one map), where synchronizing the pool costs more than it saves."""
    if count is not None and count < 1:
        raise ValueError(f"count must be a number of threads >= 1 or None, got {count}")
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def timed(device: str | torch.device | None = None) -> Iterator[Stopwatch]:
    """Time a block: ``with timed(device) as clock: ...``, then ``clock.seconds``.

    With a ``device``, its queued work is waited for before the clock starts and before it stops
    (GPUs run asynchronously: without this, a GPU block would seem to take no time).
    """
    if device is not None:
        synchronize(device)
    clock = Stopwatch()
    try:
        yield clock
    finally:
        if device is not None:
            synchronize(device)
        clock.stop()
