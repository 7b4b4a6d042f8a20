"""Batched augmentation and the in-memory batch iterator (minivit.data.augment)."""
import pytest
import torch

from minivit.data.augment import (
    Augment,
    channel_stats,
    iterate_batches,
    normalize,
    num_batches,
    random_crop,
    random_flip,
    trivial_augment,
)


def hand_made_images() -> torch.Tensor:
    """Two 3x4x5 images whose pixel values say where they are: value = 10*row + col (+100 in image 1)."""
    rows = torch.arange(4).view(4, 1) * 10
    cols = torch.arange(5).view(1, 5)
    image = (rows + cols).to(torch.uint8).expand(3, 4, 5)
    return torch.stack([image, image + 100])  # (2, 3, 4, 5)


def test_channel_stats_match_float_computation():
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=7)  # several chunks
    as_float = images.double() / 255
    torch.testing.assert_close(mean, as_float.mean(dim=(0, 2, 3)).float())
    torch.testing.assert_close(std, as_float.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False).float())
    normalized = normalize(images, mean, std)
    torch.testing.assert_close(normalized.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0)


def test_crop_with_centre_offset_is_identity_and_shifted_crop_moves_pixels():
    images = hand_made_images()
    same = random_crop(images, padding=2, offsets=torch.tensor([[2, 2], [2, 2]]))
    assert torch.equal(same, images)
    shifted = random_crop(images, padding=2, offsets=torch.tensor([[0, 0], [3, 4]]))
    # image 0: the crop starts 2 pixels above and left of the image -> two zero rows/cols, then the image
    assert torch.equal(shifted[0, :, :2], torch.zeros(3, 2, 5, dtype=torch.uint8))
    assert torch.equal(shifted[0, :, :, :2], torch.zeros(3, 4, 2, dtype=torch.uint8))
    assert torch.equal(shifted[0, :, 2:, 2:], images[0, :, :2, :3])
    # image 1: starts 1 row below and 2 columns right of the image
    assert torch.equal(shifted[1, :, :3, :3], images[1, :, 1:, 2:])
    assert shifted[1, :, 3:].sum() == 0 and shifted[1, :, :, 3:].sum() == 0
    assert shifted[1, 0, 0, 0] == 100 + 10 * 1 + 2


def test_flip_mirrors_only_chosen_images():
    images = hand_made_images()
    flipped = random_flip(images, flips=torch.tensor([True, False]))
    assert torch.equal(flipped[0], images[0].flip(-1))
    assert flipped[0, 0, 0, 0] == 4  # the last column came first
    assert torch.equal(flipped[1], images[1])


def test_augment_keeps_shape_dtype_and_draws_per_image():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    augment = Augment(crop_padding=4, flip=True, trivial_augment=True, trivial_group_size=8)
    out = augment(images, generator=torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    params = Augment().draw(1000, torch.Generator().manual_seed(0))
    assert 0.4 < params["flips"].float().mean() < 0.6
    assert params["offsets"].min() == 0 and params["offsets"].max() == 8
    assert trivial_augment(images[:5], group_size=2).shape == (5, 3, 32, 32)


def test_iterate_batches_covers_each_image_once_and_shards_like_one_process():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 4, 4).contiguous()
    labels = torch.arange(40)
    seen = torch.cat([y for _, y in iterate_batches(images, labels, 8, shuffle=True, seed=3, epoch=1)])
    assert sorted(seen.tolist()) == list(range(40)) and seen.tolist() != list(range(40))
    assert num_batches(40, 8) == 5 and num_batches(41, 8) == 6 and num_batches(41, 8, drop_last=True) == 5
    augment = Augment(crop_padding=1)
    single = list(iterate_batches(images, labels, 8, shuffle=True, seed=3, epoch=1, augment=augment))
    shards = [list(iterate_batches(images, labels, 8, shuffle=True, seed=3, epoch=1, augment=augment,
                                   rank=r, world_size=2)) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(single, *shards):
        assert torch.equal(torch.cat([y0, y1]), y)
        assert torch.equal(torch.cat([x0, x1]), x)  # the same crops and flips, whatever the world size


def test_bad_inputs_raise_clear_errors():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        random_flip(images.float())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_crop(images[0], padding=2)
    with pytest.raises(ValueError, match="padding"):
        random_crop(images, padding=-1)
    with pytest.raises(ValueError, match="offsets"):
        random_crop(images, padding=2, offsets=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        normalize(images, torch.zeros(1), torch.ones(1))
    with pytest.raises(ValueError, match="labels"):
        next(iterate_batches(images, torch.zeros(3), 2))
    with pytest.raises(ValueError, match="divide"):
        next(iterate_batches(images, torch.zeros(4), 3, world_size=2))
