import pytest
import torch

from minivit.data.mix import cutmix, cutmix_box, mix_batch, mixed_targets, mixup, sample_lam


def _batch(count=8, size=12, classes=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=generator), torch.randint(0, classes, (count,),
                                                                                 generator=generator)


def test_mixup_blends_images_and_labels_with_the_same_weight():
    images, labels = _batch()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    mixed, targets = mixup(images, labels, 0.3, perm, num_classes=5)
    torch.testing.assert_close(mixed, 0.3 * images + 0.7 * images[perm])
    torch.testing.assert_close(targets.sum(1), torch.ones(8))  # every soft label sums to 1
    for i in range(8):
        expected = torch.zeros(5)
        expected[labels[i]] += 0.3
        expected[labels[perm[i]]] += 0.7
        torch.testing.assert_close(targets[i], expected)


def test_cutmix_area_ratio_is_lambda():
    images, labels = _batch(size=16)
    perm = torch.roll(torch.arange(8), 1)
    generator = torch.Generator().manual_seed(3)
    for lam in (0.1, 0.5, 0.8, 0.97):
        box = cutmix_box(16, 16, lam, generator)
        mixed, targets, actual = cutmix(images, labels, box, perm, num_classes=5)
        from_self = (mixed == images).all(dim=1).float().mean(dim=(1, 2))  # (B,) share of own pixels
        torch.testing.assert_close(from_self, torch.full((8,), actual))
        weight_of_own = targets[torch.arange(8), labels]  # lambda, where the pasted image has another label
        same = labels == labels[perm]
        torch.testing.assert_close(weight_of_own[~same], torch.full((int((~same).sum()),), actual))
        torch.testing.assert_close(targets.sum(1), torch.ones(8))


def test_cutmix_box_area_follows_lambda_when_not_clipped():
    top, left, bottom, right = cutmix_box(100, 100, 0.75, torch.Generator().manual_seed(0))
    assert 0 <= top <= bottom <= 100 and 0 <= left <= right <= 100
    centred = [cutmix_box(100, 100, 0.75, torch.Generator().manual_seed(s)) for s in range(50)]
    areas = [(bottom - top) * (right - left) for top, left, bottom, right in centred]
    assert max(areas) == 50 * 50  # an unclipped box covers 1 - lam of the image
    assert min(areas) < 50 * 50  # and clipping at a border makes some smaller


def test_mix_batch_is_reproducible_and_off_by_default():
    images, labels = _batch()
    same_images, one_hot = mix_batch(images, labels, 5)
    assert same_images is images and torch.equal(one_hot, mixed_targets(labels, labels, 1.0, 5))
    first = mix_batch(images, labels, 5, 0.8, 1.0, torch.Generator().manual_seed(7))
    again = mix_batch(images, labels, 5, 0.8, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    kinds = set()
    for seed in range(20):  # both alphas on: sometimes a blend (no pixel kept exactly), sometimes a box
        mixed, _ = mix_batch(images, labels, 5, 0.8, 1.0, torch.Generator().manual_seed(seed))
        kinds.add(bool((mixed == images).any()))
    assert kinds == {True, False}


def test_sample_lam_and_bad_values():
    lams = [sample_lam(1.0, torch.Generator().manual_seed(s)) for s in range(400)]
    assert all(0 <= lam <= 1 for lam in lams)
    assert abs(sum(lams) / len(lams) - 0.5) < 0.05  # Beta(1, 1) is uniform: mean 1/2
    images, labels = _batch()
    with pytest.raises(ValueError, match="lam must be in"):
        mixup(images, labels, 1.5, torch.arange(8), 5)
    with pytest.raises(ValueError, match="floating-point"):
        mixup(images.to(torch.uint8), labels, 0.5, torch.arange(8), 5)
    with pytest.raises(ValueError, match="alpha"):
        mix_batch(images, labels, 5, -1.0)
    with pytest.raises(ValueError, match="does not lie inside"):
        cutmix(images, labels, (0, 0, 20, 4), torch.arange(8), 5)
