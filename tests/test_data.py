import numpy as np
import pytest
import torch
from PIL import Image

from minivit.data import CIFAR10_CLASSES, load_cifar10, load_image_folder


def write_png(image, path):
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def make_image_folder(root, classes, per_class, size=8):
    generator = torch.Generator().manual_seed(0)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
            image[0, 0, 0] = index  # remember the class in one pixel (PNG is lossless)
            write_png(image, str(folder / f"{i:04d}.png"))


def test_image_folder_decodes_in_class_order(tmp_path):
    make_image_folder(tmp_path, ["b_class", "a_class"], per_class=3)
    data = load_image_folder(tmp_path, classes=("b_class", "a_class"))
    assert data.images.shape == (6, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.images[:, 0, 0, 0].tolist() == data.labels.tolist()


def test_cifar10_from_image_folder_is_cached(tmp_path):
    make_image_folder(tmp_path / "cifar10" / "test", CIFAR10_CLASSES, per_class=2, size=32)
    first = load_cifar10("test", root=tmp_path)
    assert (tmp_path / "cache" / "cifar10_test.npz").exists()
    second = load_cifar10("test", root=tmp_path)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.classes == CIFAR10_CLASSES


def test_subset_is_balanced_and_repeatable(tmp_path):
    make_image_folder(tmp_path / "cifar10" / "train", CIFAR10_CLASSES, per_class=5, size=32)
    data = load_cifar10("train", root=tmp_path)
    subset = load_cifar10("train", root=tmp_path, limit=20)
    assert len(subset) == 20
    assert subset.labels.bincount(minlength=10).tolist() == [2] * 10
    assert torch.equal(subset.labels, data.subset(20).labels)


def test_missing_cifar10_offline_says_where_to_put_it(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(FileNotFoundError) as error:
        load_cifar10("train", root=tmp_path)
    message = str(error.value)
    assert "could not be downloaded" in message
    assert str(tmp_path / "cifar10" / "train") in message and "MINIVIT_DATA" in message


def test_unknown_split():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_cifar10("validation")


def test_mixed_image_sizes_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / "a" / "0.png"))
    write_png(torch.zeros(3, 9, 9, dtype=torch.uint8), str(tmp_path / "a" / "1.png"))
    with pytest.raises(ValueError, match="different sizes"):
        load_image_folder(tmp_path)
