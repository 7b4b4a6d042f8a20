"""The one helper per repeated job: devices.timed, data.to_float, testing.assert_state_dicts_equal."""
import pytest
import torch

from minivit import devices
from minivit.data import to_float
from minivit.devices import Stopwatch, timed
from minivit.testing import assert_state_dicts_equal


def test_timed_waits_for_the_device_before_starting_and_stopping(monkeypatch):
    events = []
    monkeypatch.setattr(devices, "synchronize", lambda device: events.append(f"sync {device}"))
    with timed("cuda") as clock:
        events.append("work")
    assert events == ["sync cuda", "work", "sync cuda"] and clock.seconds >= 0
    with timed() as clock:  # no device: wall-clock time only
        seconds_inside = clock.seconds
    assert events == ["sync cuda", "work", "sync cuda"] and clock.seconds >= seconds_inside >= 0
    watch = Stopwatch.start()
    assert watch.seconds <= watch.seconds  # running
    assert watch.stop() == watch.seconds  # stopped: fixed


def test_to_float_scales_uint8_and_keeps_floats():
    images = torch.tensor([[[[0, 51, 255]]]], dtype=torch.uint8)
    torch.testing.assert_close(to_float(images), torch.tensor([[[[0.0, 0.2, 1.0]]]]))
    assert to_float(images, torch.float64).dtype == torch.float64
    floats = torch.rand(1, 3, 2, 2)
    assert torch.equal(to_float(floats), floats)
    with pytest.raises(ValueError, match="uint8 .* or floating point"):
        to_float(images.long())


def test_assert_state_dicts_equal_names_the_differences():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    assert_state_dicts_equal(a, a.state_dict())
    with pytest.raises(AssertionError, match=r"weight: values differ \(largest difference"):
        assert_state_dicts_equal(a, b)
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.bias += 1e-7
    assert_state_dicts_equal(a, b, atol=1e-6)
    with pytest.raises(AssertionError, match="bias: values differ"):
        assert_state_dicts_equal(a, b)
    with pytest.raises(AssertionError, match=r"missing bias.*weight: torch.float32 \(2, 3\) vs torch.float32 \(3, 3\)"):
        assert_state_dicts_equal(a, {"weight": torch.zeros(3, 3)})
