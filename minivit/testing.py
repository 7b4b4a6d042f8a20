"""Helpers for minivit's own tests.

:func:`fake_accelerator` checks device handling without a GPU. It makes PyTorch's ``meta``
device the default of :func:`minivit.devices.get_device`: like a GPU, it refuses to mix its
tensors with CPU tensors in one operation ("Expected all tensors to be on the same device")
while allowing what CUDA allows (0-dim CPU scalars, CPU index tensors), and it runs forward,
backward and optimizer steps, computing shapes only. Reading a value back (``.item()``,
``.cpu()``) gives ones (never a division by zero; booleans read back so that input checks pass:
``.all()`` is True, anything else False, e.g. ``(boxes < 0).any()``), so whole training and
evaluation loops run in seconds. A helper that forgets to move a model or a batch fails under
it exactly as it would on a GPU.

:func:`count_host_syncs` counts, under the fake accelerator, every read of device values by the host
(``.item()``, ``bool(t)``, ``.cpu()``, ``.tolist()``): each is a synchronization on a GPU.

:func:`assert_state_dicts_equal` compares two models (or state dicts) key by key and names
the first differences.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minivit import devices

FAKE_DEVICE = torch.device("meta")
_aten = torch.ops.aten


class _OnesOnReadback(TorchDispatchMode):
    """Answer every read of a meta tensor's values with ones (meta tensors hold no data)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args else None
        if isinstance(source, torch.Tensor) and source.device.type == "meta":
            if func is _aten._local_scalar_dense.default:  # .item(), float(t), bool(t)
                if source.dtype == torch.bool:
                    return getattr(source, "_minivit_from_all", False)  # "all finite?" yes; "any negative?" no
                return 1 if not source.dtype.is_floating_point else 1.0
            if func.overloadpacket is _aten.all:
                result = func(*args, **kwargs)
                result._minivit_from_all = True
                return result
            target = kwargs.get("device")
            if func is _aten._to_copy.default and target is not None and torch.device(target).type != "meta":
                dtype = kwargs.get("dtype") or source.dtype
                return torch.ones(source.shape, dtype=dtype, device=target)
        if func is _aten.copy_.default and args[0].device.type != "meta" and args[1].device.type == "meta":
            return args[0].fill_(1)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_accelerator() -> Iterator[torch.device]:
    """Within this block ``minivit.devices.get_device()`` answers the fake accelerator (``meta``)."""
    previous = devices._forced_device
    devices._forced_device = FAKE_DEVICE
    try:
        with _OnesOnReadback():
            yield FAKE_DEVICE
    finally:
        devices._forced_device = previous


class HostSyncs(TorchDispatchMode):
    """Counts the operations that read device values back to the host (see :func:`count_host_syncs`)."""

    READS = ("_local_scalar_dense", "nonzero", "masked_select", "equal", "is_nonzero")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        source = args[0] if args else None
        if isinstance(source, torch.Tensor) and source.device.type == FAKE_DEVICE.type:
            target = kwargs.get("device")
            if func._schema.name.split("::")[-1] in self.READS or (
                    func is _aten._to_copy.default and target is not None and torch.device(target) != FAKE_DEVICE):
                self.count += 1
        elif func is _aten.copy_.default and args[1].device == FAKE_DEVICE and args[0].device != FAKE_DEVICE:
            self.count += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[HostSyncs]:
    """Within :func:`fake_accelerator`: ``with count_host_syncs() as syncs: ...`` then ``syncs.count``."""
    with HostSyncs() as syncs:
        yield syncs


def assert_on_device(module: torch.nn.Module, device: torch.device = FAKE_DEVICE) -> None:
    """Every parameter and buffer of ``module`` is on ``device``."""
    wrong = [name for name, tensor in [*module.named_parameters(), *module.named_buffers()]
             if tensor.device.type != device.type]
    if wrong:
        raise AssertionError(f"{len(wrong)} tensors of {type(module).__name__} are not on {device}: {wrong[:5]}")


def assert_state_dicts_equal(expected: torch.nn.Module | Mapping[str, torch.Tensor],
                             actual: torch.nn.Module | Mapping[str, torch.Tensor],
                             rtol: float = 0.0, atol: float = 0.0) -> None:
    """The same keys, shapes and dtypes, and the same values: exactly by default, else within
    ``rtol``/``atol`` (as ``torch.testing.assert_close``). Modules are compared by their state dicts."""
    expected = expected.state_dict() if isinstance(expected, torch.nn.Module) else expected
    actual = actual.state_dict() if isinstance(actual, torch.nn.Module) else actual
    problems = [f"missing {key}" for key in expected if key not in actual]
    problems += [f"unexpected {key}" for key in actual if key not in expected]
    for key in expected.keys() & actual.keys():
        a, b = expected[key], actual[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{key}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
        elif rtol == atol == 0 and not torch.equal(a.cpu(), b.cpu()):
            problems.append(f"{key}: values differ (largest difference {(a.cpu() - b.cpu()).abs().max().item():.3g})"
                            if a.is_floating_point() else f"{key}: values differ")
        elif not (rtol == atol == 0) and not torch.allclose(a.cpu(), b.cpu(), rtol=rtol, atol=atol):
            problems.append(f"{key}: values differ beyond rtol={rtol}, atol={atol}")
    if problems:
        raise AssertionError(f"state dicts differ in {len(problems)} entries: {sorted(problems)[:8]}")
