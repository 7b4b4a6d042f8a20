import random
from pathlib import Path

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


def make_checkout(root):
    """A folder that looks like a repository checkout holding the minivit package."""
    (root / "minivit").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'minivit'\n")
    return root / "minivit" / "runtime.py"


def make_site_packages(root):
    """A folder that looks like a virtual environment's site-packages holding an installed minivit."""
    package = root / "venv" / "lib" / "python3.11" / "site-packages" / "minivit"
    package.mkdir(parents=True)
    return package / "runtime.py"


def test_data_dir_rules_in_order(tmp_path, monkeypatch):
    from minivit.runtime import _choose_data_dir

    checkout = make_checkout(tmp_path / "repo")
    installed = make_site_packages(tmp_path)
    colab = {"google.colab": object()}
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # 1. MINIVIT_DATA wins over everything
    path, reason = _choose_data_dir(checkout, {"MINIVIT_DATA": "~/mine"}, colab)
    assert path == tmp_path / "home" / "mine" and "MINIVIT_DATA" in reason
    # 2. a repository checkout (editable install, or run from the repository): its data/
    path, reason = _choose_data_dir(checkout, {}, colab)
    assert path == tmp_path / "repo" / "data" and "checkout" in reason
    # 3. an installed minivit on Colab: /content/data, found by the module or by the environment variable
    assert _choose_data_dir(installed, {}, colab)[0] == Path("/content/data")
    path, reason = _choose_data_dir(installed, {"COLAB_RELEASE_TAG": "release-colab_20250101"}, {})
    assert path == Path("/content/data") and "Colab" in reason
    # 4. an installed minivit elsewhere: the user cache folder, never site-packages
    path, reason = _choose_data_dir(installed, {}, {})
    assert path == tmp_path / "home" / ".cache" / "minivit" and "installed" in reason
    path, _ = _choose_data_dir(installed, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {})
    assert path == tmp_path / "xdg" / "minivit"
    assert _choose_data_dir(installed, {"XDG_CACHE_HOME": "relative/cache"}, {})[0] == (
        path.parent.parent / "home" / ".cache" / "minivit"
    )
    for environ, modules in [({}, {}), ({}, colab), ({"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {})]:
        assert "site-packages" not in _choose_data_dir(installed, environ, modules)[0].parts


def test_data_dir_of_this_checkout_and_its_reason(monkeypatch, tmp_path):
    import minivit.runtime

    monkeypatch.delenv("MINIVIT_DATA", raising=False)
    repository = Path(minivit.runtime.__file__).resolve().parent.parent
    assert minivit.data_dir() == repository / "data"
    monkeypatch.chdir(repository / "notebooks")  # where notebooks run: no absolute path of this machine
    assert minivit.runtime.data_dir_reason() == (
        "data goes to ../data (because minivit is imported from a repository checkout, "
        "which keeps data in its data/ folder)"
    )
    monkeypatch.setenv("MINIVIT_DATA", str(tmp_path / "elsewhere"))
    assert minivit.runtime.data_dir_reason().endswith("(because MINIVIT_DATA is set)")


def test_display_path(monkeypatch, tmp_path):
    from minivit.runtime import display_path

    (tmp_path / "course" / "notebooks").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "course" / "notebooks")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert display_path(tmp_path / "course" / "notebooks" / "data") == "data"
    assert display_path(tmp_path / "course" / "data" / "cache") == "../data/cache"
    assert display_path(tmp_path / "home" / ".cache" / "minivit") == "~/.cache/minivit"
    assert display_path("/content/data") == "/content/data"
