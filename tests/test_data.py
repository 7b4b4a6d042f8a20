import os

import numpy as np
import pytest
import torch
from PIL import Image

from minivit.data import CIFAR10_CLASSES, ImageSet, load_cifar10, load_image_folder
from minivit.data.cifar10 import CANONICAL_SOURCE


def write_png(image, path):
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def make_image_folder(root, classes, per_class, size=8, suffix=".png"):
    generator = torch.Generator().manual_seed(0)
    for index, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
            image[0, 0, 0] = index  # remember the class in one pixel (PNG is lossless)
            write_png(image, str(folder / f"{i:04d}{suffix}"))


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


def test_first_load_says_what_it_decodes_and_later_loads_are_quiet(tmp_path, monkeypatch, capsys):
    make_image_folder(tmp_path / "data" / "cifar10" / "test", CIFAR10_CLASSES, per_class=2, size=32)
    monkeypatch.chdir(tmp_path)  # paths are printed relative to the current folder
    load_cifar10("test", root=tmp_path / "data")
    printed = capsys.readouterr()
    assert printed.out == (
        "CIFAR-10 test: decoding 20 images from data/cifar10/test, caching them in data/cache/cifar10_test.npz (once)\n"
    )
    assert "CIFAR-10 test" in printed.err  # the progress bar
    load_cifar10("test", root=tmp_path / "data", limit=10)
    assert capsys.readouterr() == ("", "")


def test_source_says_what_the_data_is_and_survives_cache_and_subset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_image_folder(tmp_path / "png" / "cifar10" / "test", CIFAR10_CLASSES, per_class=2, size=32)
    make_image_folder(tmp_path / "jpg" / "cifar10" / "test", CIFAR10_CLASSES, per_class=2, size=32, suffix=".jpg")
    png = load_cifar10("test", root=tmp_path / "png")
    assert png.source == "CIFAR-10 as PNG image folder (png/cifar10/test)"
    jpeg = load_cifar10("test", root=tmp_path / "jpg")
    assert jpeg.source.startswith("CIFAR-10 as JPEG image folder (jpg/cifar10/test)")
    assert "not the canonical" in jpeg.source
    assert load_cifar10("test", root=tmp_path / "jpg").source == jpeg.source  # from the cache
    assert load_cifar10("test", root=tmp_path / "jpg", limit=10).source == jpeg.source
    assert jpeg.subset(5).source == jpeg.source
    with np.load(tmp_path / "jpg" / "cache" / "cifar10_test.npz") as cache:  # allow_pickle=False
        assert "not the canonical" in str(cache["meta"])
    monkeypatch.chdir(tmp_path / "jpg")  # the path follows the current folder
    assert load_cifar10("test", root=tmp_path / "jpg").source.startswith("CIFAR-10 as JPEG image folder (cifar10/test)")
    assert ImageSet(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), torch.zeros(1, dtype=torch.int64),
                    ("a",)).source == "unknown"
    assert load_image_folder(tmp_path / "png" / "cifar10" / "test").source == "PNG image folder (../png/cifar10/test)"


def test_cache_is_rebuilt_when_the_image_folder_changes(tmp_path, capsys):
    folder = tmp_path / "cifar10" / "test"
    make_image_folder(folder, CIFAR10_CLASSES, per_class=2, size=32)
    assert len(load_cifar10("test", root=tmp_path)) == 20
    capsys.readouterr()

    write_png(torch.full((3, 32, 32), 7, dtype=torch.uint8), str(folder / "cat" / "0100.png"))  # added
    data = load_cifar10("test", root=tmp_path)
    assert len(data) == 21 and data.labels.tolist().count(CIFAR10_CLASSES.index("cat")) == 3
    printed = capsys.readouterr().out
    assert "cifar10/test changed since" in printed and "(20 files then, 21 now); building it again" in printed

    replaced = folder / "dog" / "0000.png"  # replaced by other pixels (and another date)
    write_png(torch.full((3, 32, 32), 200, dtype=torch.uint8), str(replaced))
    stat = replaced.stat()
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    data = load_cifar10("test", root=tmp_path)
    printed = capsys.readouterr().out
    assert "21 files then and now" in printed and "decoding 21 images" in printed
    assert (data.images == 200).all(dim=(1, 2, 3)).sum() == 1

    (folder / "cat" / "0100.png").unlink()  # removed
    assert len(load_cifar10("test", root=tmp_path)) == 20
    assert "21 files then, 20 now" in capsys.readouterr().out
    load_cifar10("test", root=tmp_path)
    assert capsys.readouterr().out == ""  # unchanged: quiet


def test_cache_of_an_older_minivit_is_rebuilt(tmp_path, capsys):
    make_image_folder(tmp_path / "cifar10" / "test", CIFAR10_CLASSES, per_class=1, size=32)
    (tmp_path / "cache").mkdir()
    np.savez(tmp_path / "cache" / "cifar10_test.npz", images=np.zeros((3, 3, 32, 32), np.uint8),
             labels=np.zeros(3, np.int64))
    data = load_cifar10("test", root=tmp_path)
    assert len(data) == 10 and "made by an older minivit" in capsys.readouterr().out


def test_torchvision_download_says_what_it_fetches_and_is_canonical(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    class FakeCIFAR10:  # torchvision's class, without the 163 MB download
        url = torchvision.datasets.CIFAR10.url
        filename = torchvision.datasets.CIFAR10.filename
        downloaded = False

        def __init__(self, root, train, download):
            if not (download or FakeCIFAR10.downloaded):
                raise RuntimeError("Dataset not found or corrupted.")
            FakeCIFAR10.downloaded = True
            self.data = np.full((20 if train else 10, 32, 32, 3), 9, np.uint8)
            self.targets = list(range(10)) * (len(self.data) // 10)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.chdir(tmp_path)
    data = load_cifar10("test", root=tmp_path / "data")
    printed = capsys.readouterr().out
    assert "downloading cifar-10-python.tar.gz (about 163 MB) from www.cs.toronto.edu into data" in printed
    assert data.source == CANONICAL_SOURCE and data.subset(1).source == CANONICAL_SOURCE
    assert load_cifar10("test", root=tmp_path / "data").source == CANONICAL_SOURCE  # from the cache
    assert capsys.readouterr().out == ""
    # an image folder put there later takes precedence: the cache notices
    make_image_folder(tmp_path / "data" / "cifar10" / "test", CIFAR10_CLASSES, per_class=1, size=32)
    data = load_cifar10("test", root=tmp_path / "data")
    assert len(data) == 10 and data.source.startswith("CIFAR-10 as PNG image folder")
    assert "appeared after" in capsys.readouterr().out


def _build_cache_in_child(root, barrier, log, results):
    """One 'rank': wait for the other, then load (and maybe build) the cache; record every decode."""
    import time

    import minivit.data.cifar10 as cifar10

    decode = cifar10._load_cifar10_uncached

    def slow_logged_decode(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # widen the race window
        return decode(*args, **kwargs)

    cifar10._load_cifar10_uncached = slow_logged_decode
    barrier.wait()
    try:
        data = cifar10.load_cifar10("test", root=root)
        results.put(("ok", data.images.sum().item(), len(data)))
    except BaseException as error:  # reported to the parent
        results.put(("error", repr(error), 0))


def test_two_processes_building_the_cache_at_once_build_it_once(tmp_path):
    """Issue 13, finding 1: under torchrun every rank built the cache and raced on the rename."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork after other tests' threads can deadlock
    make_image_folder(tmp_path / "cifar10" / "test", CIFAR10_CLASSES, per_class=2, size=32)
    log = tmp_path / "decodes.log"
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_build_cache_in_child, args=(tmp_path, barrier, log, results))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert all(status == "ok" for status, _, _ in outcomes), outcomes
    assert outcomes[0][1:] == outcomes[1][1:] and outcomes[0][2] == 20
    assert len(log.read_text().split()) == 1, "the cache was decoded by both processes"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")) == \
        ["cifar10_test.npz"]


def test_corrupt_or_inconsistent_cache_names_the_file_and_says_delete_it(tmp_path):
    """Issue 13, findings 10/13/14: a cache missing an array was a numpy KeyError; one whose images and
    labels differ in length was accepted."""
    make_image_folder(tmp_path / "cifar10" / "test", CIFAR10_CLASSES, per_class=2, size=32)
    load_cifar10("test", root=tmp_path)
    cache = tmp_path / "cache" / "cifar10_test.npz"
    with np.load(cache) as arrays:
        images, labels, meta = arrays["images"], arrays["labels"], arrays["meta"]
    for broken in ({"images": images, "meta": meta}, {"images": images, "labels": labels[:-3], "meta": meta}):
        np.savez(cache, **broken)
        with pytest.raises(ValueError, match=r"cifar10_test\.npz is corrupt or incomplete.*delete it to rebuild"):
            load_cifar10("test", root=tmp_path)


def test_truncated_jpeg_names_the_file_and_resource_forks_are_skipped(tmp_path):
    """Issue 13, findings 10/14: a truncated JPEG raised PIL's error without the file; a macOS ._0000.jpg
    resource fork stopped the whole load."""
    make_image_folder(tmp_path / "images", ["a", "b"], per_class=2, size=8, suffix=".jpg")
    (tmp_path / "images" / "a" / "._0000.jpg").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    data = load_image_folder(tmp_path / "images")
    assert len(data) == 4
    broken = tmp_path / "images" / "b" / "0001.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"cannot decode the image .*b/0001\.jpg.*damaged or truncated"):
        load_image_folder(tmp_path / "images")
