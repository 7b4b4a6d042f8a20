"""CIFAR-10 as uint8 tensors, from an image folder, torchvision's files or its download.

CIFAR-10 is found, in this order:

1. an image-folder tree ``<data>/cifar10/<split>/<class>/*.jpg|png`` (how machines
   without internet get it);
2. torchvision's pickled copy ``<data>/cifar-10-batches-py`` (from an earlier download);
3. torchvision's download into ``<data>`` (needs the network).

The images are decoded once and cached as uint8 arrays in ``<data>/cache``, so a
second load of all 60,000 images takes about a second. The cache records where its images
came from (``ImageSet.source``) and, for an image folder, its listing (names, sizes and
dates of the files): when the folder changes, the next load decodes it again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from minivit.runtime import data_dir, display_path

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
CANONICAL_SOURCE = "CIFAR-10 (canonical, torchvision)"
CIFAR10_DOWNLOAD_SIZE = "about 163 MB"  # cifar-10-python.tar.gz: 170,498,071 bytes
_CACHE_FORMAT = 2  # 1: images and labels only (no record of their source)


@dataclass
class ImageSet:
    """A labelled image set held in memory: ``images`` (N, 3, H, W) uint8, ``labels`` (N,) int64.

    ``source`` says what the data is and where it came from, e.g. ``CIFAR-10 (canonical, torchvision)``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    source: str = "unknown"

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, count: int, seed: int = 0) -> "ImageSet":
        """A class-balanced random subset of ``count`` images (the same for the same seed)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count (or limit) must be an integer >= 1, got {count!r}; use None for all images")
        if count >= len(self):
            return self
        generator = torch.Generator().manual_seed(seed)
        per_class = [
            idx[torch.randperm(len(idx), generator=generator)]
            for idx in (torch.nonzero(self.labels == c).flatten() for c in range(len(self.classes)))
        ]
        # interleave the classes so that any prefix stays balanced
        order = torch.stack([p[: count // len(per_class) + 1] for p in per_class], dim=1).flatten()[:count]
        return ImageSet(self.images[order], self.labels[order], self.classes, self.source)


def _is_image_name(name: str) -> bool:
    """An image file by its suffix; macOS resource forks (``._0000.jpg``, copied off a Mac) are not images."""
    return name[name.rfind("."):].lower() in IMAGE_SUFFIXES and not name.startswith("._")


def _image_files(root: Path, classes: tuple[str, ...]) -> tuple[list[Path], list[int]]:
    """The image files of ``root/<class>/`` in class order, sorted by name, and their labels."""
    files, labels = [], []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"class folder {folder} is missing (expected one folder per class: {classes})")
        found = sorted(p for p in folder.iterdir() if _is_image_name(p.name))
        files += found
        labels += [index] * len(found)
    return files, labels


def _encoding(suffixes: set[str]) -> str:
    """``JPEG``, ``PNG`` or ``JPEG and PNG`` from a set of lower-case file suffixes."""
    kinds = sorted({"PNG" if s == ".png" else "JPEG" for s in suffixes})
    return " and ".join(kinds) or "empty"


def load_image_folder(
    root: str | Path, classes: tuple[str, ...] | None = None, workers: int = 4, progress: bool | str = False
) -> ImageSet:
    """Decode an image-folder tree ``root/<class>/*.jpg|png`` into an :class:`ImageSet`.

    Class folders are taken in ``classes`` order (default: sorted folder names);
    all images must have the same size. ``progress`` shows a progress bar (a string
    labels it).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = tuple(classes) if classes else tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    files, labels = _image_files(root, classes)
    if not files:
        raise FileNotFoundError(f"no .jpg or .png images under {root}/<class>/")

    def decode(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
        except (OSError, SyntaxError, ValueError) as error:  # truncated or not an image (PIL's errors)
            raise ValueError(f"cannot decode the image {path} ({type(error).__name__}: {error}); the file is damaged "
                             f"or truncated: replace it (re-download or re-extract the data) or delete it") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        decoded = pool.map(decode, files)
        if progress:
            from tqdm.auto import tqdm

            label = progress if isinstance(progress, str) else f"decoding {root.name}"
            decoded = tqdm(decoded, total=len(files), desc=label, unit="img", mininterval=0.5)
        images = list(decoded)
    shapes = {img.shape for img in images}
    if len(shapes) != 1:
        raise ValueError(
            f"images under {root} have different sizes {sorted(shapes)[:4]}; resize them to one size first"
        )
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)
    source = f"{_encoding({p.suffix.lower() for p in files})} image folder ({display_path(root)})"
    return ImageSet(stacked, torch.tensor(labels, dtype=torch.int64), classes, source)


def folder_listing(root: str | Path, classes: tuple[str, ...] = CIFAR10_CLASSES) -> dict:
    """What identifies the images of an image folder without reading them.

    Their count, total size, newest modification time, encoding, and a SHA-1 of every
    file's name, size and modification time: any file added, removed or replaced changes it.
    """
    root = Path(root)
    lines, sizes, mtimes, suffixes = [], [], [0], set()
    for name in classes:
        folder = root / name
        if not folder.is_dir():
            lines.append(f"{name}/ missing")
            continue
        with os.scandir(folder) as entries:
            found = sorted((e.name, e.stat()) for e in entries if _is_image_name(e.name))
        lines += [f"{name}/{file_name}\t{stat.st_size}\t{stat.st_mtime_ns}" for file_name, stat in found]
        sizes += [stat.st_size for _, stat in found]
        mtimes += [stat.st_mtime_ns for _, stat in found]
        suffixes |= {file_name[file_name.rfind("."):].lower() for file_name, _ in found}
    return {
        "files": len(sizes), "bytes": sum(sizes), "newest_mtime_ns": max(mtimes), "encoding": _encoding(suffixes),
        "sha1": hashlib.sha1("\n".join(lines).encode()).hexdigest(),
    }


def _image_folder_source(folder: Path, encoding: str) -> str:
    """``ImageSet.source`` of CIFAR-10 read from an image folder."""
    source = f"CIFAR-10 as {encoding} image folder ({display_path(folder)})"
    if "JPEG" in encoding:
        source += ": a lossy JPEG re-encoding, not the canonical CIFAR-10 pixels"
    return source


def _missing_cifar10_message(root: Path, split: str, reason: str) -> str:
    return (
        f"CIFAR-10 ({split} split) is not on this machine and could not be downloaded ({reason}).\n"
        f"Put it in one of these places, then run again:\n"
        f"  * an image-folder tree {root / 'cifar10' / split}/<class>/*.jpg|png "
        f"(classes: {', '.join(CIFAR10_CLASSES)});\n"
        f"  * torchvision's files {root / 'cifar-10-batches-py'}/ (from cifar-10-python.tar.gz).\n"
        f"Set MINIVIT_DATA to use another data folder."
    )


def _load_cifar10_uncached(root: Path, split: str, cache: Path, listing: dict | None) -> tuple[ImageSet, dict]:
    """Decode CIFAR-10's ``split`` from the first place that has it; the set and what the cache records."""
    folder = root / "cifar10" / split
    if listing is not None:  # the image folder exists
        print(
            f"CIFAR-10 {split}: decoding {listing['files']:,} images from {display_path(folder)}, "
            f"caching them in {display_path(cache)} (once)"
        )
        data = load_image_folder(folder, CIFAR10_CLASSES, progress=f"CIFAR-10 {split}")
        data.source = _image_folder_source(folder, listing["encoding"])
        meta = {"origin": "image-folder", "folder": folder.relative_to(root).as_posix(), "listing": listing}
        return data, meta
    from torchvision.datasets import CIFAR10

    train = split == "train"
    where = display_path(root)  # torchvision prints the paths it is given: keep this machine's absolute ones out
    try:
        dataset = CIFAR10(where, train=train, download=False)
    except RuntimeError:  # not downloaded yet
        print(
            f"CIFAR-10: downloading {CIFAR10.filename} ({CIFAR10_DOWNLOAD_SIZE}) from "
            f"{CIFAR10.url.split('/')[2]} into {where} (once; both splits)"
        )
        try:
            dataset = CIFAR10(where, train=train, download=True)
        except Exception as exc:  # offline: URLError, socket errors, ...
            raise FileNotFoundError(_missing_cifar10_message(root, split, f"{type(exc).__name__}: {exc}")) from None
    print(f"CIFAR-10 {split}: caching torchvision's copy in {display_path(cache)} (once)")
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
    data = ImageSet(images, torch.tensor(dataset.targets, dtype=torch.int64), CIFAR10_CLASSES, CANONICAL_SOURCE)
    return data, {"origin": "torchvision"}


def _read_cache_meta(cache: Path) -> dict | None:
    """What a cache file records about its images; None for a cache of an older minivit."""
    try:
        with np.load(cache) as arrays:
            if "meta" not in arrays.files:
                return None
            meta = json.loads(str(arrays["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # unreadable: rebuild it
        return {"format": "unreadable"}
    return meta


def _stale_reason(meta: dict | None, listing: dict | None, folder: Path, cache: Path) -> str | None:
    """Why the cache no longer matches the data it stands for, or None when it does."""
    if meta is None:
        return f"{display_path(cache)} was made by an older minivit (it does not record its source)"
    if meta.get("format") != _CACHE_FORMAT:
        return f"{display_path(cache)} is unreadable or has another format"
    if listing is None:  # no image folder (any more): the cache is all there is, keep it
        return None
    if meta.get("origin") != "image-folder":
        return (
            f"the image folder {display_path(folder)} appeared after {display_path(cache)} was made from "
            "torchvision's copy"
        )
    old = meta.get("listing", {})
    if old.get("sha1") == listing["sha1"]:
        return None
    if old.get("files") != listing["files"]:
        change = f"{old.get('files', 0):,} files then, {listing['files']:,} now"
    else:
        change = f"{listing['files']:,} files then and now, but names, sizes or dates differ"
    return f"{display_path(folder)} changed since {display_path(cache)} was made ({change})"


def _load_fresh_cache(cache: Path, listing: dict | None, folder: Path, root: Path, split: str,
                      quiet: bool = False) -> ImageSet | None:
    """The cached set, or None when there is no cache or it is stale (saying why, unless ``quiet``)."""
    if not cache.exists():
        return None
    meta = _read_cache_meta(cache)
    stale = _stale_reason(meta, listing, folder, cache)
    if stale is not None:
        if not quiet:
            print(f"CIFAR-10 {split}: {stale}; building it again")
        return None
    if meta.get("origin") == "image-folder":
        source = _image_folder_source(root / meta["folder"], meta["listing"]["encoding"])
    else:
        source = meta.get("source", CANONICAL_SOURCE)
    try:
        with np.load(cache) as arrays:
            images, labels = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])
        if images.dim() != 4 or images.shape[1] != 3 or labels.shape != images.shape[:1]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not agree")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"the CIFAR-10 cache {cache} is corrupt or incomplete ({type(error).__name__}: {error}); "
                         f"delete it to rebuild it from the data: rm {cache}") from None
    return ImageSet(images, labels, CIFAR10_CLASSES, source)


def _build_cache(root: Path, split: str, cache: Path, listing: dict | None) -> ImageSet:
    """Decode the split and write its cache atomically (a temp name unique to this process, then a rename)."""
    data, meta = _load_cifar10_uncached(root, split, cache, listing)
    meta.update(format=_CACHE_FORMAT, split=split, source=data.source)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial.npz")
    try:
        np.savez(partial, images=data.images.numpy(), labels=data.labels.numpy(), meta=np.array(json.dumps(meta)))
        partial.replace(cache)  # atomic: a killed run never leaves a broken cache
    finally:
        partial.unlink(missing_ok=True)
    return data


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, what: str):
    """Hold an exclusive ``fcntl.flock`` on ``lock_path`` (created beside the cache); other processes wait.

    Where ``fcntl`` is missing (Windows) there is no lock: concurrent builders then each decode, and the
    per-process temp names and the atomic rename still leave one whole cache.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        locked = True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{what}: another process is building {display_path(lock_path.with_suffix(''))}; waiting for it",
                  flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): go on unlocked
            locked = False
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def load_cifar10(split: str = "train", root: str | Path | None = None, limit: int | None = None) -> ImageSet:
    """CIFAR-10 as uint8 tensors: images (N, 3, 32, 32), labels (N,).

    ``limit`` keeps a class-balanced subset (for the ``smoke`` and ``cpu`` profiles).
    The first call decodes and caches the images, saying so in one line and with a
    progress bar; later calls read the cache quietly, unless the image folder changed
    since (then it is decoded again). ``.source`` of the result says what the data is.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; use 'train' or 'test'")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None (all images) or an integer >= 1, got {limit!r}")
    root = Path(root) if root is not None else data_dir()
    cache = root / "cache" / f"cifar10_{split}.npz"
    folder = root / "cifar10" / split
    listing = folder_listing(folder) if folder.is_dir() else None
    data = _load_fresh_cache(cache, listing, folder, root, split)
    if data is None:
        # Several processes (torchrun's ranks) may get here at once: one builds under the lock, the others
        # wait for it and then load what it built.
        with _exclusive_lock(cache.with_name(cache.name + ".lock"), f"CIFAR-10 {split}"):
            data = _load_fresh_cache(cache, listing, folder, root, split, quiet=True)
            if data is None:
                data = _build_cache(root, split, cache, listing)
    return data.subset(limit) if limit is not None else data
