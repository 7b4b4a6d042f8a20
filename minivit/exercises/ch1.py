"""Chapter 1 exercises: 1D and 2D convolution by hand, output sizes, receptive fields, equivariance."""
from __future__ import annotations

import torch

from minivit.conv import conv1d_loops, conv2d_unfold, conv_output_size, receptive_field
from minivit.exercises.base import Exercise, Wrong, call, compare, letter_checker

NOTEBOOK = "01_convolution_refresher.ipynb"


def _check_conv1d(fn) -> None:
    gen = torch.Generator().manual_seed(1)
    cases = [(10, 3, 1, 0), (10, 4, 2, 1), (9, 3, 3, 2), (5, 5, 1, 0), (7, 2, 4, 1)]
    for length, k, stride, padding in cases:
        signal = torch.randint(-4, 5, (length,), generator=gen).tolist()
        kernel = torch.randint(-3, 4, (k,), generator=gen).tolist()
        kernel[0], kernel[-1] = 2, -1  # never symmetric, so a flipped kernel shows
        on = f"a signal of length {length}, kernel length {k}, stride {stride}, padding {padding}"
        got = call(fn, signal, kernel, stride, padding, on=on)
        left_only = conv1d_loops([0.0] * padding + signal, kernel, stride, 0)
        compare(torch.tensor(got, dtype=torch.float64), torch.tensor(conv1d_loops(signal, kernel, stride, padding)),
                on=on, wrong={
                    "the kernel is flipped: that is the mathematicians' convolution; deep learning slides it "
                    "unflipped (cross-correlation)": torch.tensor(conv1d_loops(signal, kernel[::-1], stride, padding)),
                    "the stride is ignored: the window should move `stride` samples per output":
                        torch.tensor(conv1d_loops(signal, kernel, 1, padding)),
                    "the padding is missing: pad `padding` zeros on both ends first":
                        torch.tensor(conv1d_loops(signal, kernel, stride, 0)),
                    "padding only on the left: pad both ends": torch.tensor(left_only),
                })


ex1 = Exercise(
    name="ex1", title="1D convolution with stride and padding", kind="implement",
    prompt="""
    Write `my_conv1d(signal, kernel, stride, padding)` for plain Python lists: pad `padding` zeros on both
    ends, then slide the kernel (unflipped, as in deep learning) `stride` samples at a time and return
    the list of outputs. The checker compares it with `minivit.conv.conv1d_loops` on several sizes.
    """,
    starter="""
    from minivit.exercises.ch1 import ex1


    def my_conv1d(signal, kernel, stride, padding):
        raise NotImplementedError  # your code here


    ex1.check(my_conv1d)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="my_conv1d",
    solution_code="""
def my_conv1d(signal, kernel, stride, padding):
    padded = [0.0] * padding + list(signal) + [0.0] * padding
    length = (len(padded) - len(kernel)) // stride + 1
    return [sum(padded[i * stride + k] * kernel[k] for k in range(len(kernel))) for i in range(length)]
""",
    hints=("Build the padded list first; output i starts at position i * stride of the padded list.",
           "There are (len(padded) - len(kernel)) // stride + 1 outputs, and output i is "
           "sum over k of padded[i * stride + k] * kernel[k]."),
    checker=_check_conv1d, anchor="## 2. 2D convolution",
    recognised=("flipped kernel", "stride ignored", "padding missing", "padding on one side only"),
)


def _check_conv2d(fn) -> None:
    gen = torch.Generator().manual_seed(2)
    for batch, c_in, c_out, height, width, k in [(2, 3, 4, 5, 7, 3), (1, 1, 1, 4, 4, 4), (3, 2, 5, 6, 9, 2)]:
        images = torch.randn(batch, c_in, height, width, generator=gen)
        weight = torch.randn(c_out, c_in, k, k, generator=gen)
        on = f"images {tuple(images.shape)} and weight {tuple(weight.shape)}"
        got = call(fn, images.clone(), weight.clone(), on=on)
        expected = conv2d_unfold(images, weight)
        compare(got, expected, on=on, wrong={
            "the kernel is flipped (true convolution); F.conv2d and the course use cross-correlation":
                lambda: conv2d_unfold(images, weight.flip(-1, -2)),
            "height and width are swapped in the output: the unfolded columns run row by row, so reshape to "
            "(B, C_out, H_out, W_out)": expected.transpose(-1, -2),
            "the result still has one column per window (B, C_out, L): reshape it to (B, C_out, H_out, W_out)":
                expected.flatten(2),
        })


ex2 = Exercise(
    name="ex2", title="conv2d as one unfold and one matrix product", kind="implement",
    prompt="""
    Write `my_conv2d_unfold(images, weight)` (stride 1, no padding, no bias) with exactly one `F.unfold` and
    one matrix product: images (B, C_in, H, W), weight (C_out, C_in, kH, kW) -> (B, C_out, H_out, W_out).
    The checker compares it with `minivit.conv.conv2d_unfold` on non-square images and kernels.
    """,
    starter="""
    import torch.nn.functional as F  # noqa: F401, F811

    from minivit.exercises.ch1 import ex2


    def my_conv2d_unfold(images, weight):
        raise NotImplementedError  # your code here: F.unfold, then one matrix product


    ex2.check(my_conv2d_unfold)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="my_conv2d_unfold",
    solution_code="""
import torch.nn.functional as F


def my_conv2d_unfold(images, weight):
    batch, _, height, width = images.shape
    c_out, _, kh, kw = weight.shape
    columns = F.unfold(images, (kh, kw))  # (B, C_in*kH*kW, L): one column per window
    out = weight.reshape(c_out, -1) @ columns  # (B, C_out, L)
    return out.reshape(batch, c_out, height - kh + 1, width - kw + 1)
""",
    hints=("F.unfold(images, (kH, kW)) gives one column per window, (B, C_in*kH*kW, L); flatten each "
           "kernel to a row the same way.",
           "weight.reshape(C_out, -1) @ columns is (B, C_out, L) with L = H_out * W_out, windows row by row; "
           "H_out = H - kH + 1."),
    checker=_check_conv2d, anchor="## 3. Padding",
    recognised=("flipped kernel", "height and width swapped", "not reshaped (B, C_out, L)"),
)


_OUT_SIZE_MISTAKES = [
    ("1 too small: did you forget the + 1 (the first window)?", lambda n, k, s, p: (n + 2 * p - k) // s),
    ("1 too large: count the first window once", lambda n, k, s, p: (n + 2 * p - k) // s + 2),
    ("too small: did you forget the padding?", lambda n, k, s, p: (n - k) // s + 1),
    ("padding is added on both sides: 2 * padding", lambda n, k, s, p: (n + p - k) // s + 1),
    ("rounded up: a window that does not fit is dropped, so round down",
     lambda n, k, s, p: -(-(n + 2 * p - k) // s) + 1),
    ("not an integer: use floor division //", lambda n, k, s, p: (n + 2 * p - k) / s + 1),
]


def _check_out_size(fn) -> None:
    cases = [(32, 3, 1, 1), (32, 5, 2, 1), (28, 5, 1, 0), (7, 3, 2, 0), (224, 7, 2, 3), (10, 4, 3, 2), (5, 5, 1, 0)]
    got = [call(fn, *case, on="size {}, kernel {}, stride {}, padding {}".format(*case)) for case in cases]
    expected = [conv_output_size(*case) for case in cases]
    bad = [i for i in range(len(cases)) if got[i] != expected[i] or isinstance(got[i], float)]
    if not bad:
        return
    i = bad[0]
    on = "size {}, kernel {}, stride {}, padding {}".format(*cases[i])
    for message, mistake in _OUT_SIZE_MISTAKES:  # the mistake that explains every case
        if all(got[j] == mistake(*cases[j]) and type(got[j]) is type(mistake(*cases[j])) for j in range(len(cases))):
            raise Wrong(f"output size {got[i]} for {on}, expected {expected[i]}: {message}")
    raise Wrong(f"output size {got[i]!r} for {on}, expected {expected[i]}")


ex3 = Exercise(
    name="ex3", title="the output size of a convolution", kind="predict",
    prompt="""
    Predict before you compute: write `my_out_size(size, kernel, stride, padding)`, the output length of a
    convolution along one axis (no dilation). Test it on a 32-pixel input, kernel 5, stride 2, padding 1.
    """,
    starter="""
    from minivit.exercises.ch1 import ex3


    def my_out_size(size, kernel, stride, padding):
        raise NotImplementedError  # your code here


    ex3.check(my_out_size)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="my_out_size",
    solution_code="""
def my_out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1
""",
    hints=("Count where the first window starts and how many steps of `stride` still fit in the padded input.",
           "The padded input has size + 2 * padding samples; the last window must end inside it: "
           "floor((padded - kernel) / stride) steps, plus the first window."),
    checker=_check_out_size, anchor="## 4. Receptive fields",
    recognised=("forgot + 1", "one too many", "forgot padding", "padding on one side", "rounded up",
                "not floor division"),
)


def _check_receptive_field(fn) -> None:
    for layers in ([(3, 1), (3, 1), (3, 1)], [(3, 2), (3, 2), (3, 1)], [(7, 2), (3, 2), (3, 1), (3, 2)],
                   [(5, 1)], [(2, 2), (2, 2), (2, 2)]):
        on = f"layers (kernel, stride) = {layers}"
        got = call(fn, list(layers), on=on)
        expected = receptive_field(layers)
        if isinstance(got, int):
            raise Wrong(f"got one number for {on}: return the receptive field after every layer, a list")
        got = list(got)
        if got == expected:
            continue
        no_stride = receptive_field([(k, 1) for k, _ in layers])
        jump_early, field, jump = [], 1, 1
        for k, s in layers:
            jump *= s
            field += (k - 1) * jump
            jump_early.append(field)
        if got == no_stride:
            raise Wrong(f"{got} on {on}, expected {expected}: the strides are ignored; each stride spaces out "
                        "the next layer's taps")
        if got == jump_early:
            raise Wrong(f"{got} on {on}, expected {expected}: a layer's own stride does not widen its own "
                        "kernel, only the layers after it")
        raise Wrong(f"{got} on {on}, expected {expected}")


ex4 = Exercise(
    name="ex4", title="receptive fields of a stack", kind="implement",
    prompt="""
    Write `my_receptive_field(layers)`: for a stack of convolutions given as `(kernel, stride)` pairs, return
    the receptive field (in input pixels) after each layer, as a list.
    """,
    starter="""
    from minivit.exercises.ch1 import ex4


    def my_receptive_field(layers):
        raise NotImplementedError  # your code here


    ex4.check(my_receptive_field)
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="my_receptive_field",
    solution_code="""
def my_receptive_field(layers):
    field, jump, fields = 1, 1, []
    for kernel, stride in layers:
        field += (kernel - 1) * jump  # this layer's taps are `jump` input pixels apart
        jump *= stride
        fields.append(field)
    return fields
""",
    hints=("Track two numbers: the field so far, and how many input pixels apart two neighbouring "
           "outputs of the current layer are (the 'jump').",
           "field += (kernel - 1) * jump, and only then jump *= stride."),
    checker=_check_receptive_field, anchor="## 5. Inductive bias",
    recognised=("strides ignored", "own stride applied too early", "a single number instead of a list"),
)

ex5 = Exercise(
    name="ex5", title="where translation equivariance breaks", kind="experiment",
    prompt="""
    Run the cell: it shifts a random image by 3 columns (`torch.roll`) before and after a padded 3x3
    convolution and prints the columns where the two results differ. Which statement is right?

    - **A** They never differ: convolution is exactly translation equivariant.
    - **B** They differ only in a few columns at the borders (the zero padding, and the roll's wrap-around).
    - **C** They differ everywhere: the filter's weights depend on the position.
    - **D** They differ only in the first row.
    """,
    starter="""
    import torch

    from minivit.exercises.ch1 import ex5


    def measure_shift_then_conv():
        torch.manual_seed(0)
        x, w = torch.randn(1, 1, 16, 16), torch.randn(1, 1, 3, 3)

        def shift(t):
            return torch.roll(t, shifts=3, dims=-1)  # 3 columns to the right, wrapping around

        conv = torch.nn.functional.conv2d
        diff = (conv(shift(x), w, padding=1) - shift(conv(x, w, padding=1))).abs()[0, 0]
        print("columns where they differ:", diff.amax(dim=0).gt(1e-5).nonzero().flatten().tolist(), "of 0..15")


    measure_shift_then_conv()

    answer = ...  # 'A', 'B', 'C' or 'D'
    ex5.check(answer)
    # ex5.hint()
    # ex5.solution()
    """,
    answer_name="answer",
    solution_code="answer = 'B'  # only columns 0, 2, 3 and 15 differ: the borders and the wrap-around seam\n",
    hints=("Look at the printed column numbers: are they spread over the image, or at special places?",
           "Inside the image every output sees the same 3x3 neighbourhood before and after the shift; "
           "only where the window touches the zero padding or the seam that torch.roll wraps around can it differ."),
    checker=letter_checker("B", {
        "A": "the printed list is not empty: something breaks equivariance, look at which columns",
        "C": "the same filter is used at every position (weight sharing); the list shows only a few columns",
        "D": "the shift is along the columns; look at which columns differ, not rows",
    }),
    anchor="## 6. A hand-made edge filter",
    recognised=("A: exact equivariance", "C: position-dependent weights", "D: rows vs columns"),
)

EXERCISES = [ex1, ex2, ex3, ex4, ex5]
