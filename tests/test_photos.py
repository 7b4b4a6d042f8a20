"""Tests for minivit.photos (the offline photo, ImageNet preprocessing, class names), the ViT-B/16
ImageNet loader of minivit.vit and the shared download path of minivit.downloads.

No test downloads anything: the download is replaced by weights created locally, or by an error.
"""
import socket
import sys
import urllib.error

import pytest
import torch
from torch import nn
from torchvision.models import ViT_B_16_Weights, vit_b_16

from minivit.downloads import download_state_dict
from minivit.photos import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    coco_classes,
    imagenet_classes,
    imagenet_preprocess,
    sample_photo,
    square_thumbnail,
)
from minivit.vit import ViT, load_pretrained_vit_b16


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_sample_photo_loads_offline(no_network):
    photo = sample_photo()
    assert photo.dtype == torch.uint8 and photo.shape == (3, 600, 512)
    assert photo.float().std() > 20  # a real picture, not a blank
    assert not torch.equal(photo[0], photo[2])  # colour, not grey copied into three channels


def test_imagenet_preprocess_equals_torchvision_transforms():
    reference = ViT_B_16_Weights.IMAGENET1K_V1.transforms()
    photo = sample_photo()
    ours = imagenet_preprocess(photo)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference(photo))
    landscape = torch.randint(0, 256, (2, 3, 300, 420), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(imagenet_preprocess(landscape), reference(landscape))
    floats = landscape.float() / 255  # float images in [0, 1] are accepted too
    torch.testing.assert_close(imagenet_preprocess(floats), reference(floats))


def test_imagenet_preprocess_normalizes_with_the_imagenet_statistics():
    grey = torch.full((3, 256, 256), 0.5)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(imagenet_preprocess(grey)[:, 100, 100], expected)


@pytest.mark.parametrize("bad, error, match", [
    (torch.zeros(1, 64, 64, dtype=torch.uint8), ValueError, "must be RGB"),
    (torch.zeros(64, 64, 3, dtype=torch.uint8), ValueError, "must be RGB"),
    (torch.zeros(3, 64, 64, dtype=torch.int32), ValueError, "uint8 .* or float"),
    ([[0, 1]], TypeError, "must be a tensor"),
])
def test_bad_photos_give_clear_errors(bad, error, match):
    with pytest.raises(error, match=match):
        imagenet_preprocess(bad)
    with pytest.raises(error, match=match):
        square_thumbnail(bad)


def test_crop_larger_than_resize_is_refused():
    with pytest.raises(ValueError, match="crop_size"):
        imagenet_preprocess(sample_photo(), resize_size=200, crop_size=224)


def test_square_thumbnail_keeps_the_centre_square():
    image = torch.zeros(3, 40, 80)
    image[:, :, 20:60] = 1.0  # the centre 40 x 40 square is white, the sides black
    thumbnail = square_thumbnail(image, 8)
    assert thumbnail.shape == (3, 8, 8)
    torch.testing.assert_close(thumbnail, torch.ones(3, 8, 8))
    photo_thumbnail = square_thumbnail(sample_photo())
    assert photo_thumbnail.shape == (3, 32, 32) and photo_thumbnail.dtype == torch.uint8
    with pytest.raises(ValueError, match="size must be a positive int"):
        square_thumbnail(image, 0)


def test_class_names_fit_the_models():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench"  # ImageNet class 0
    coco = coco_classes()
    assert len(coco) == 91  # DETR-R50's label ids 0-90 are COCO category ids (build_detr_r50(num_classes=91))
    assert coco[1] == "person" and coco.count("N/A") == 10


@pytest.fixture(scope="module")
def local_b16() -> nn.Module:
    """torchvision's ViT-B/16 with locally created (random) weights, head made non-zero."""
    torch.manual_seed(0)
    model = vit_b_16(weights=None).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initializes the head
    nn.init.normal_(model.heads.head.bias, std=0.02)
    return model


def test_load_pretrained_vit_b16_loads_the_downloaded_weights(monkeypatch, capsys, local_b16):
    requested = []

    def fake_download(url, **kwargs):
        requested.append((url, kwargs.get("check_hash"), socket.getdefaulttimeout()))
        return local_b16.state_dict()

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = load_pretrained_vit_b16(timeout_s=3.0)
    assert isinstance(model, ViT) and not model.training
    assert requested == [(ViT_B_16_Weights.IMAGENET1K_V1.url, True, 3.0)]  # hash checked, short timeout
    images = imagenet_preprocess(sample_photo())[None]  # (1, 3, 224, 224)
    with torch.no_grad():
        expected, logits = local_b16(images), model(images)
    assert logits.shape == (1, 1000)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert "could not" not in capsys.readouterr().out


@pytest.mark.parametrize("error", [
    urllib.error.URLError("no internet"), OSError("network unreachable"), TimeoutError("timed out"),
])
def test_load_pretrained_vit_b16_offline_says_one_line_and_returns_none(monkeypatch, capsys, error):
    def no_internet(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_internet)
    previous_timeout = socket.getdefaulttimeout()
    assert load_pretrained_vit_b16(timeout_s=1.0) is None
    printed = capsys.readouterr()
    assert printed.out == (
        f"Torchvision's ImageNet ViT-B/16 weights could not be downloaded ({type(error).__name__}).\n"
    )
    assert printed.err == ""
    assert socket.getdefaulttimeout() == previous_timeout  # restored


def test_download_announces_itself_once_when_the_progress_bar_starts(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def fake_download(url, progress, **kwargs):
        assert progress  # nothing cached yet: show the progress bar
        sys.stderr.write("10%")
        sys.stderr.write("100%")
        print("/an/absolute/path/weights-0123abcd.pth")  # torch.hub's own chatter on stdout is hidden
        return {"weight": torch.ones(2)}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    state = download_state_dict("https://example.com/models/weights-0123abcd.pth", "the test weights", "about 1 MB")
    assert torch.equal(state["weight"], torch.ones(2))
    printed = capsys.readouterr()
    assert printed.out.count("Downloading the test weights weights-0123abcd.pth, about 1 MB from example.com") == 1
    assert "/an/absolute/path" not in printed.out
    assert printed.err == "10%100%"


def test_download_of_a_cached_file_is_quiet(monkeypatch, capsys, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "weights-0123abcd.pth").write_bytes(b"cached")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def fake_download(url, progress, **kwargs):
        assert not progress
        sys.stderr.write("anything")
        return {}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    assert download_state_dict("https://example.com/weights-0123abcd.pth", "the test weights") == {}
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("timeout_s", [0, -1.0])
def test_download_timeout_must_be_positive(timeout_s):
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        download_state_dict("https://example.com/w.pth", "the test weights", timeout_s=timeout_s)
