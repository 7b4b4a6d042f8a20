"""Chapter 5 exercises: DETR's output shape, box formats, padding masks, and what the mask buys."""
from __future__ import annotations

import torch

from minivit.boxes import box_cxcywh_to_xyxy, denormalize_boxes
from minivit.detr import pad_images
from minivit.exercises.base import Exercise, Wrong, call, compare, letter_checker

NOTEBOOK = "05_detr_forward_pass.ipynb"


def _check_logits_shape(answer) -> None:
    try:
        got = tuple(int(n) for n in answer)
    except (TypeError, ValueError) as error:
        raise Wrong(f"answer with a tuple of sizes, e.g. (1, 2, 3); got {answer!r}") from error
    known = {
        (2, 100, 91): "one class is missing: DETR adds a 'no object' class, so there are 91 + 1 outputs",
        (100, 2, 92): "that is the sequence-first layout of the paper's minimal DETR; minivit's DETR is batch first",
        (2, 100, 4): "that is the shape of pred_boxes; the question asks for the class logits",
        (6, 2, 100, 92): "that is every decoder layer's logits stacked; pred_logits holds the last layer's only",
        (2, 92, 100): "the queries and the classes are swapped: one row of class scores per query",
    }
    if got == (2, 100, 92):
        return
    raise Wrong(known.get(got, f"{got} is not the shape of pred_logits"))


ex1 = Exercise(
    name="ex1", title="the shape of DETR's class logits", kind="predict",
    prompt="""
    Predict before you run: `minivit.detr.DETR` with the paper's configuration (91 COCO class ids, 100 object
    queries, 6 decoder layers) reads a batch of 2 images. What is the shape of `outputs["pred_logits"]`?
    """,
    starter="""
    from minivit.exercises.ch5 import ex1

    answer = ...  # a tuple, e.g. (1, 2, 3)
    ex1.check(answer)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="answer",
    solution_code="answer = (2, 100, 92)  # batch, queries, 91 classes + 'no object'\n",
    hints=("One row of class scores per query per image. How many classes does the classifier score?",
           "Batch first (2), one row per query (100), and 91 class ids plus the 'no object' class."),
    checker=_check_logits_shape, anchor="## 2. Box formats",
    recognised=("no-object class forgotten", "sequence-first layout", "boxes' shape", "all decoder layers",
                "queries and classes swapped"),
)


def _random_cxcywh(gen, n):
    centres = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    sizes = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
    return torch.cat([centres, sizes], dim=1)


def _check_to_xyxy(fn) -> None:
    gen = torch.Generator().manual_seed(8)
    for shape in [(5,), (2, 3), ()]:
        boxes = _random_cxcywh(gen, max(1, int(torch.tensor(shape).prod()))).reshape(*shape, 4)
        on = f"boxes of shape {tuple(boxes.shape)}"
        got = call(fn, boxes.clone(), on=on)
        expected = box_cxcywh_to_xyxy(boxes)
        cx, cy, w, h = boxes.unbind(-1)
        compare(got, expected, on=on, wrong={
            "the boxes are twice too large: the corners are half a width (w / 2) from the centre":
                torch.stack([cx - w, cy - h, cx + w, cy + h], -1),
            "the order is (x1, x2, y1, y2); xyxy means (x1, y1, x2, y2)":
                expected[..., [0, 2, 1, 3]],
            "that is (x1, y1, w, h): the second corner is the first plus the size":
                torch.stack([cx - w / 2, cy - h / 2, w, h], -1),
        })


ex2 = Exercise(
    name="ex2", title="cxcywh to xyxy", kind="implement",
    prompt="""
    DETR predicts boxes as (cx, cy, w, h); IoU needs corners (x1, y1, x2, y2). Write `my_cxcywh_to_xyxy(boxes)`
    for boxes of shape (..., 4).
    """,
    starter="""
    from minivit.exercises.ch5 import ex2


    def my_cxcywh_to_xyxy(boxes):
        raise NotImplementedError  # your code here


    ex2.check(my_cxcywh_to_xyxy)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="my_cxcywh_to_xyxy",
    solution_code="""
import torch


def my_cxcywh_to_xyxy(boxes):
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
""",
    hints=("boxes.unbind(-1) gives cx, cy, w, h; the corners are symmetric around the centre.",
           "x1 = cx - w / 2, y1 = cy - h / 2, x2 = cx + w / 2, y2 = cy + h / 2, stacked on the last axis."),
    checker=_check_to_xyxy, anchor="## 3. The real DETR",
    recognised=("corners a full width away (no / 2)", "order (x1, x2, y1, y2)", "xywh instead of xyxy"),
)


def _check_to_pixels(fn) -> None:
    gen = torch.Generator().manual_seed(9)
    for size in [(480, 640), (100, 300), (64, 64)]:
        boxes = _random_cxcywh(gen, 4)
        on = f"4 boxes and image_size (height, width) = {size}"
        got = call(fn, boxes.clone(), size, on=on)
        expected = denormalize_boxes(box_cxcywh_to_xyxy(boxes), size)
        compare(got, expected, on=on, atol=1e-3, wrong={
            "x is scaled by the height and y by the width: image_size is (height, width), x runs along the width":
                lambda: denormalize_boxes(box_cxcywh_to_xyxy(boxes), size[::-1]),
            "the boxes are still (cx, cy, w, h): convert them to corners too":
                lambda: denormalize_boxes(boxes, size),
            "the boxes are still normalized to [0, 1]: multiply by the image's width and height":
                lambda: box_cxcywh_to_xyxy(boxes),
        })


ex3 = Exercise(
    name="ex3", title="normalized boxes to pixels", kind="implement",
    prompt="""
    Write `my_to_pixels(boxes, image_size)`: DETR's normalized (cx, cy, w, h) boxes in [0, 1], shape (N, 4), to
    (x1, y1, x2, y2) in pixels of an image of `image_size = (height, width)`. You may use
    `minivit.boxes.box_cxcywh_to_xyxy`.
    """,
    starter="""
    from minivit.boxes import box_cxcywh_to_xyxy  # noqa: F401, F811
    from minivit.exercises.ch5 import ex3


    def my_to_pixels(boxes, image_size):
        raise NotImplementedError  # your code here


    ex3.check(my_to_pixels)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="my_to_pixels",
    solution_code="""
import torch

from minivit.boxes import box_cxcywh_to_xyxy


def my_to_pixels(boxes, image_size):
    height, width = image_size
    return box_cxcywh_to_xyxy(boxes) * torch.tensor([width, height, width, height], dtype=boxes.dtype)
""",
    hints=("Two steps, in either order: corners from centre and size, then a scale per coordinate.",
           "x1 and x2 scale by the width, y1 and y2 by the height: multiply by (W, H, W, H)."),
    checker=_check_to_pixels, anchor="## 3. The real DETR",
    recognised=("height and width swapped", "still cxcywh", "still normalized"),
)


def _check_padding_mask(fn) -> None:
    for sizes in ([(3, 5), (4, 2)], [(6, 6)], [(2, 7), (5, 3), (1, 1)]):
        images = [torch.zeros(3, h, w) for h, w in sizes]
        _, expected = pad_images(images)
        height, width = expected.shape[-2:]
        on = f"image sizes (h, w) {sizes} padded to {height} x {width}"
        got = call(fn, list(sizes), height, width, on=on)
        got_t = torch.as_tensor(got)
        if got_t.dtype != torch.bool:
            raise Wrong(f"a {got_t.dtype} mask on {on}: return a boolean mask, True on padding")
        top_left = torch.ones_like(expected)
        swapped = torch.ones(len(sizes), height, width, dtype=torch.bool)
        for i, (h, w) in enumerate(sizes):
            top_left[i, height - h:, width - w:] = False
            swapped[i, :w, :h] = False
        compare(got_t, expected, on=on, wrong={
            "True and False are swapped: True marks padding (the pixels to ignore)": ~expected,
            "the image sits at the bottom right; pad_images keeps it at the top left and pads bottom and right":
                top_left,
            "height and width are swapped: sizes are (h, w), and the mask is (B, H, W)": swapped,
        })


ex4 = Exercise(
    name="ex4", title="the padding mask of a batch", kind="implement",
    prompt="""
    A batch holds images of different sizes, each zero-padded at the bottom and right to `height x width`.
    Write `my_padding_mask(sizes, height, width)`: `sizes` is a list of `(h, w)`; return a boolean (B, height,
    width) mask, True on padding, as `minivit.detr.pad_images` does.
    """,
    starter="""
    from minivit.exercises.ch5 import ex4


    def my_padding_mask(sizes, height, width):
        raise NotImplementedError  # your code here


    ex4.check(my_padding_mask)
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="my_padding_mask",
    solution_code="""
import torch


def my_padding_mask(sizes, height, width):
    mask = torch.ones(len(sizes), height, width, dtype=torch.bool)  # everything is padding ...
    for i, (h, w) in enumerate(sizes):
        mask[i, :h, :w] = False  # ... but the image itself, at the top left
    return mask
""",
    hints=("Start from all True (padding) and clear the rectangle each image occupies.",
           "mask[i, :h, :w] = False for image i of size (h, w)."),
    checker=_check_padding_mask, anchor="## 4. The official DETR-R50",
    recognised=("mask inverted", "image placed at the bottom right", "height and width swapped", "not boolean"),
)

ex5 = Exercise(
    name="ex5", title="what the padding mask buys", kind="experiment",
    prompt="""
    Run the cell: it runs chapter 6's trained tiny DETR on an image alone, and on the same image padded into a
    batch with a larger one, once with the padding mask and once without. Which statement fits the printed
    differences?

    - **A** With the mask, the padded image's predictions equal those of the image alone (up to float
      rounding); without it they change.
    - **B** Both change: padding always changes a DETR's predictions.
    - **C** Neither changes: zero pixels contribute nothing.
    - **D** Only with the mask do they change.
    """,
    starter="""
    import torch

    import minivit.detection
    import minivit.detr
    from minivit.exercises.ch5 import ex5


    def measure_padding():
        torch.manual_seed(0)
        model, _ = minivit.detection.load_tiny_detr()
        model.eval()
        small, large = torch.rand(3, 40, 48), torch.rand(3, 64, 64)
        batch, mask = minivit.detr.pad_images([small, large])
        with torch.no_grad():
            alone = model(small[None])["pred_boxes"][0]
            masked = model(batch, mask)["pred_boxes"][0]
            unmasked = model(batch)["pred_boxes"][0]
        print(f"largest box difference to the image alone: with the mask {(masked - alone).abs().max():.1e}, "
              f"without {(unmasked - alone).abs().max():.1e}")


    measure_padding()

    answer = ...  # 'A', 'B', 'C' or 'D'
    ex5.check(answer)
    # ex5.hint()
    # ex5.solution()
    """,
    answer_name="answer",
    solution_code="answer = 'A'  # about 1e-7 with the mask, about 0.3 (in units of the image size) without\n",
    hints=("Compare both printed numbers with float32 rounding (about 1e-7) and with the size of a box (0 to 1).",
           "The mask keeps padding out of the attention keys and out of the sine positions; without it the "
           "encoder attends to the zeros and the positions are scaled by the padded size."),
    checker=letter_checker("A", {
        "B": "look at the number printed with the mask: it is at float rounding level",
        "C": "zero pixels still become tokens that the encoder attends to, and they shift the positions: look "
             "at the number printed without the mask",
        "D": "it is the other way round in the printed numbers",
    }),
    anchor="## 4. The official DETR-R50",
    recognised=("B: padding always changes predictions", "C: zeros contribute nothing", "D: reversed"),
)

EXERCISES = [ex1, ex2, ex3, ex4, ex5]
