import itertools

import pytest
import torch
import torch.nn.functional as F

from minivit.conv import (
    SmallCNN,
    conv1d_loops,
    conv2d_loops,
    conv2d_unfold,
    conv_output_size,
    receptive_field,
)


def test_conv1d_course_example():
    assert conv1d_loops([1, 4, -1, 0, 2, -2, 1, 3, 3, 1], [1, 2, 0, -1]) == [9, 0, 1, 3, -5, -3, 6]


@pytest.mark.parametrize("length,kernel,stride,padding", [(10, 4, 1, 0), (11, 3, 2, 1), (7, 7, 1, 3), (9, 2, 3, 2)])
def test_conv1d_equals_torch(length, kernel, stride, padding):
    generator = torch.Generator().manual_seed(length * kernel)
    signal = torch.randn(length, generator=generator, dtype=torch.float64)
    weights = torch.randn(kernel, generator=generator, dtype=torch.float64)
    expected = F.conv1d(signal.view(1, 1, -1), weights.view(1, 1, -1), stride=stride, padding=padding).flatten()
    got = torch.tensor(conv1d_loops(signal.tolist(), weights.tolist(), stride, padding), dtype=torch.float64)
    torch.testing.assert_close(got, expected)


CASES = list(itertools.product([1, 2], [(1, 1), (3, 3), (3, 5)], [1, 2, (2, 1)], [0, 1, (2, 0)]))


@pytest.mark.parametrize("batch,kernel,stride,padding", CASES)
def test_conv2d_implementations_equal_f_conv2d(batch, kernel, stride, padding):
    generator = torch.Generator().manual_seed(hash((batch, kernel, str(stride), str(padding))) % 2**31)
    images = torch.randn(batch, 3, 9, 11, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 3, *kernel, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    expected = F.conv2d(images, weight, bias, stride=stride, padding=padding)
    torch.testing.assert_close(conv2d_loops(images, weight, bias, stride, padding), expected)
    torch.testing.assert_close(conv2d_unfold(images, weight, bias, stride, padding), expected)


def test_output_size_formula_matches_torch():
    for size, kernel, stride, padding, dilation in itertools.product([7, 8, 32], [1, 3, 5], [1, 2, 3], [0, 1, 2],
                                                                     [1, 2]):
        if size + 2 * padding < dilation * (kernel - 1) + 1:
            continue
        out = F.conv1d(torch.zeros(1, 1, size), torch.zeros(1, 1, kernel), stride=stride, padding=padding,
                       dilation=dilation)
        assert conv_output_size(size, kernel, stride, padding, dilation) == out.shape[-1]


def test_receptive_field_of_a_vgg_like_stack():
    # 3x3 convs: +2 each; a 2x2 pool of stride 2 doubles the later steps
    assert receptive_field([(3, 1), (3, 1), (2, 2), (3, 1), (3, 1)]) == [3, 5, 6, 10, 14]


def test_receptive_field_matches_gradient_support():
    layers = [(3, 1), (3, 2), (3, 1)]
    convs = torch.nn.Sequential(*[torch.nn.Conv2d(1, 1, k, stride=s, bias=False) for k, s in layers])
    for conv in convs:
        torch.nn.init.constant_(conv.weight, 1.0)
    image = torch.zeros(1, 1, 32, 32, requires_grad=True)
    convs(image)[0, 0, 3, 3].backward()
    rows = torch.nonzero(image.grad[0, 0].sum(dim=1)).flatten()
    assert len(rows) == receptive_field(layers)[-1]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="channels"):
        conv2d_unfold(torch.zeros(1, 3, 5, 5), torch.zeros(2, 1, 3, 3))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        conv2d_loops(torch.zeros(3, 5, 5), torch.zeros(2, 3, 3, 3))
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv_output_size(2, 5)
    with pytest.raises(ValueError, match="expected images of shape"):
        SmallCNN()(torch.zeros(1, 1, 32, 32))


def test_small_cnn_shapes_and_size():
    model = SmallCNN()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == 288_746
