import random

import numpy as np
import pytest
import torch

import minivit


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("MINIVIT_PROFILE", "smoke")
    assert minivit.get_profile() == "smoke"
    assert minivit.by_profile(smoke=1, cpu=2, gpu=3) == 1
    monkeypatch.setenv("MINIVIT_PROFILE", " CPU ")
    assert minivit.get_profile() == "cpu"


def test_default_profile_follows_cuda(monkeypatch):
    monkeypatch.delenv("MINIVIT_PROFILE", raising=False)
    expected = "gpu" if torch.cuda.is_available() else "cpu"
    assert minivit.get_profile() == expected


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("MINIVIT_PROFILE", "fast")
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        minivit.get_profile()
    with pytest.raises(ValueError, match="unknown profile"):
        minivit.by_profile(smoke=1, cpu=2, gpu=3, profile="huge")


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    minivit.seed_everything(123)
    first = draw()
    minivit.seed_everything(123)
    assert draw() == first


def test_data_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path / "elsewhere"))
    assert minivit.data_dir() == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere").is_dir()


def test_get_device():
    assert minivit.get_device("cpu").type == "cpu"
    assert minivit.get_device().type in {"cpu", "cuda", "mps"}
