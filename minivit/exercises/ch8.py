"""Chapter 8 exercises: Swin's windows, its relative bias, windows against a trained ViT, CutMix, DeiT's loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minivit.data.mix import cutmix, mixed_targets
from minivit.distill import hard_distillation_loss
from minivit.exercises.base import Exercise, Wrong, call, compare, letter_checker
from minivit.swin import RelativePositionBias, relative_position_index, window_partition

NOTEBOOK = "08_beyond_the_plain_vit.ipynb"

# ex1: Swin-T's first stage: 224 px images in 4 px patches (a 56 x 56 grid) of width 96, windows of 7 x 7
_BATCH, _SIDE, _DIM, _WINDOW = 2, 56, 96, 7


def _check_windows_shape(answer) -> None:
    try:
        got = tuple(int(n) for n in answer)
    except (TypeError, ValueError) as error:
        raise Wrong(f"answer with a tuple of sizes, e.g. (1, 2, 3); got {answer!r}") from error
    expected = tuple(window_partition(torch.empty(_BATCH, _SIDE, _SIDE, _DIM), _WINDOW).shape)
    per_side, tokens = _SIDE // _WINDOW, _WINDOW * _WINDOW
    known = {
        (_BATCH, per_side**2, tokens, _DIM): "the windows of all images go into one batch dimension: "
                                             "B * (windows per image), not two separate axes",
        (_BATCH * per_side**2, _WINDOW, _WINDOW, _DIM): "each window is flattened to M*M tokens for the attention",
        (_BATCH * per_side, tokens, _DIM): f"{per_side} windows fit along each side, so an image has "
                                           f"{per_side} x {per_side} of them",
        (_BATCH, _SIDE * _SIDE, _DIM): "that is the token sequence before the cut; the windows are separate "
                                       "'images' of M*M tokens each",
    }
    if got == expected:
        return
    raise Wrong(known.get(got, f"{got} is not the shape window_partition returns"))


ex1 = Exercise(
    name="ex1", title="how many windows?", kind="predict",
    prompt=f"""
    Predict before you run: in Swin-T's first stage, {_BATCH} images of 224 x 224 pixels in 4-pixel patches make a
    grid `({_BATCH}, {_SIDE}, {_SIDE}, {_DIM})` (B, h, w, D). What shape does `window_partition(grid, {_WINDOW})`
    return (windows of {_WINDOW} x {_WINDOW} tokens)?
    """,
    starter="""
    from minivit.exercises.ch8 import ex1

    answer = ...  # a tuple, e.g. (1, 2, 3)
    ex1.check(answer)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="answer",
    solution_code="answer = (2 * 8 * 8, 7 * 7, 96)  # 56 / 7 = 8 windows per side, all images' windows in the batch\n",
    hints=("How many 7 x 7 windows cover a 56 x 56 grid? Where do the windows of the two images go?",
           "(B * h/M * w/M, M*M, D): 8 x 8 windows per image, 2 images, 49 tokens per window."),
    checker=_check_windows_shape, anchor="### The shift and its mask",
    recognised=("windows and images as two axes", "window not flattened", "windows per side not squared",
                "the uncut sequence"),
)


def _check_relative_bias(fn) -> None:
    gen = torch.Generator().manual_seed(82)
    for window, heads in [(3, 2), (4, 3), (2, 1)]:
        module = RelativePositionBias(window, heads)
        with torch.no_grad():
            module.table.copy_(torch.randn(module.table.shape, generator=gen))
        table = module.table.detach().clone()  # ((2M-1)^2, heads)
        on = f"a table {tuple(table.shape)} for window={window}, {heads} head(s)"
        got = call(fn, table.clone(), window, on=on)
        expected = module().detach()  # (heads, M*M, M*M)
        index = relative_position_index(window)
        side = 2 * window - 1
        swapped = (index % side) * side + index // side  # dx first, dy second
        compare(got, expected, on=on, wrong={
            "the offset is taken the other way round (key minus query); the table is read at "
            "(row_i - row_j, col_i - col_j) for query i and key j": table[index.T].permute(2, 0, 1),
            "dy and dx are swapped in the row number: it is (dy + M - 1) * (2M - 1) + (dx + M - 1)":
                table[swapped].permute(2, 0, 1),
            "the heads must come first, (heads, M*M, M*M), as they are added to each head's scores":
                table[index],
        })


ex2 = Exercise(
    name="ex2", title="the relative position bias of every head", kind="implement",
    prompt="""
    Write `my_relative_bias(table, window)`: given a learned table `((2M-1)^2, heads)` (one row per relative
    offset, as `RelativePositionBias.table`), return the bias `(heads, M*M, M*M)` that is added to each head's
    attention scores inside an `M x M` window: entry `[h, i, j]` is the table's row for the offset
    `(dy, dx) = (row_i - row_j, col_i - col_j)` of query token i and key token j (tokens row by row in the
    window), numbered `(dy + M - 1) * (2M - 1) + (dx + M - 1)`, in column h. Build the index yourself (no
    `relative_position_index`); the checker uses several window sizes and head counts.
    """,
    starter="""
    import torch  # noqa: F401, F811

    from minivit.exercises.ch8 import ex2


    def my_relative_bias(table, window):
        raise NotImplementedError  # your code here


    ex2.check(my_relative_bias)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="my_relative_bias",
    solution_code="""
import torch


def my_relative_bias(table, window):
    positions = torch.arange(window * window)
    rows, cols = positions // window, positions % window  # (M*M,) each: the tokens' row and column
    dy = rows[:, None] - rows[None, :] + window - 1  # (M*M, M*M), in [0, 2M-2]
    dx = cols[:, None] - cols[None, :] + window - 1
    index = dy * (2 * window - 1) + dx  # (M*M, M*M): rows of the table
    return table[index].permute(2, 0, 1)  # (M*M, M*M, heads) -> (heads, M*M, M*M)
""",
    hints=("Token t of the window sits at row t // M and column t % M. Compute (dy, dx) for every pair with "
           "broadcasting, shift both into [0, 2M-2], combine them into one row number, then index the table.",
           "index = (dy + M - 1) * (2M - 1) + (dx + M - 1) of shape (M*M, M*M); table[index] is (M*M, M*M, heads): "
           "permute(2, 0, 1)."),
    checker=_check_relative_bias, anchor="### One window over the whole image",
    recognised=("offset reversed (key minus query)", "dy and dx swapped", "heads last"),
)


ex3 = Exercise(
    name="ex3", title="would 4 x 4 windows suit the trained ViT?", kind="experiment",
    prompt="""
    Swin lets each token attend only inside its window. Would that cost chapter 4's small ViT much? Run the
    cell: for the course's pretrained CIFAR ViT (`load_pretrained_cifar_vit()`, trained with global
    attention on a JPEG q75 re-encoding of CIFAR-10; test images of that copy), it prints, per layer and head,
    the share of each patch's attention (renormalized over the patches, the class token left out) that falls
    inside the patch's own 4 x 4 window of the 8 x 8 grid, averaged over patches and images, next to the
    share of a head that attends uniformly (16 of 64 patches). What do you see?

    - **A** Every head keeps less than half of its attention inside its window (a uniform head: a quarter):
      4 x 4 windows would cut away most of what this ViT attends to, in every layer.
    - **B** The first layer's heads keep over 80% inside their windows, the last layer's much less: early
      layers are local, as Swin assumes.
    - **C** Every head keeps over 90% inside its window: windows would lose almost nothing.
    - **D** Every share is below 10%: the heads avoid their own window.
    """,
    starter="""
    import torch  # noqa: F401, F811

    import minivit
    import minivit.data.augment
    import minivit.swin
    import minivit.train
    import minivit.viz
    from minivit.exercises.ch8 import ex3


    def measure_window_share(window=4):
        model, info = minivit.train.load_pretrained_cifar_vit()
        test = minivit.data.load_cifar10("test", limit=minivit.by_profile(smoke=16, cpu=256, gpu=1000))
        images = minivit.data.augment.normalize(test.images, info["mean"], info["std"])
        _, maps = minivit.viz.capture_attention(model, images)  # (layers, images, heads, T, T)
        patches = maps[..., 1:, 1:]  # (L, B, H, N, N): patch queries, patch keys
        patches = patches / patches.sum(dim=-1, keepdim=True)  # renormalized without the class token
        side = model.grid_size
        window_of = torch.empty(side * side, dtype=torch.long)  # each patch's window number
        members = minivit.swin.window_partition(torch.arange(side * side).reshape(1, side, side, 1), window)
        for number, patch_ids in enumerate(members[..., 0]):
            window_of[patch_ids] = number
        same_window = (window_of[:, None] == window_of[None, :]).float()  # (N, N)
        share = (patches * same_window).sum(dim=-1).mean(dim=(1, 3))  # (L, H): averaged over images and queries
        for layer, shares in enumerate(share.tolist()):
            print(f"layer {layer}: " + ", ".join(f"{s:.0%}" for s in shares))
        print(f"a uniform head: {window * window / (side * side):.0%} ({len(test)} images of {test.source})")


    measure_window_share()

    answer = ...  # 'A', 'B', 'C' or 'D'
    ex3.check(answer)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="answer",
    solution_code="answer = 'A'  # every printed share lies between about 22% and 41%, the uniform head's is 25%\n",
    hints=("Compare the largest printed share with 50%, and layer 0's shares with 80%.",
           "The printed shares lie between about 22% and 41%: all under half, in every layer."),
    checker=letter_checker("A", {
        "B": "look at layer 0's printed shares: none is near 80%",
        "C": "a share over 90% would print as 90% or more; the largest printed share is under 50%",
        "D": "a share below 10% would print as under 10%; every printed share is above 20%",
    }),
    anchor="## 2. A convolutional stem",
    recognised=("B: early layers local", "C: windows lose nothing", "D: heads avoid their window"),
)


def _check_cutmix(fn) -> None:
    gen = torch.Generator().manual_seed(83)
    for batch, classes, (height, width), box in [(4, 10, (6, 8), (1, 2, 4, 7)), (3, 5, (5, 5), (0, 0, 5, 2)),
                                                  (2, 3, (4, 7), (2, 3, 3, 3))]:
        images = torch.randn(batch, 3, height, width, generator=gen)
        labels = torch.randint(0, classes, (batch,), generator=gen)
        labels[1] = (labels[0] + 1) % classes  # at least two different labels
        perm = torch.roll(torch.arange(batch), 1)
        on = f"images {tuple(images.shape)}, box (top, left, bottom, right) = {box}, {classes} classes"
        given = images.clone()
        got = call(fn, given, labels.clone(), box, perm.clone(), classes, on=on)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"return a pair (mixed images, soft targets), got {type(got).__name__} (on {on})")
        mixed, targets = got
        expected_images, expected_targets, lam = cutmix(images, labels, box, perm, classes)
        top, left, bottom, right = box
        compare(mixed, expected_images, on=on, what="the mixed images", wrong={
            "the box goes the wrong way round: image i must keep its own pixels outside the box and get its "
            "partner's, images[perm][i], inside it": lambda: _paste(images[perm], images, box),
            "rows and columns are swapped: the box is (top, left, bottom, right), rows top:bottom":
                lambda: _paste(images, images[perm], (left, top, right, bottom)),
        })
        compare(targets, expected_targets, on=on, what="the targets", wrong={
            "the label weights are swapped: each image's own label weighs the share of its pixels that it keeps "
            "(1 - the box's area)": lambda: mixed_targets(labels, perm, 1.0 - lam, classes),
            "the targets are one-hot: CutMix mixes the labels by the box's area": F.one_hot(labels, classes).float(),
        })
        if not torch.equal(given, images):
            raise Wrong(f"your function changed the input images; paste into a copy (images.clone()) (on {on})")


def _paste(base: torch.Tensor, source: torch.Tensor, box) -> torch.Tensor:
    top, left, bottom, right = box
    out = base.clone()
    out[..., top:bottom, left:right] = source[..., top:bottom, left:right]
    return out


ex4 = Exercise(
    name="ex4", title="CutMix of a batch", kind="implement",
    prompt="""
    Write `my_cutmix(images, labels, box, perm, num_classes)`: images `(B, C, H, W)`, labels `(B,)`, a box
    `(top, left, bottom, right)` in pixels and a permutation `perm` of the batch. Paste the box of each
    partner `images[perm]` into a copy of the batch (leave `images` unchanged), and return the pair
    `(mixed images (B, C, H, W), soft targets (B, num_classes))`: each image's own label weighs the share of
    its pixels it kept, its partner's label the box's share. The checker uses boxes that are not square.
    """,
    starter="""
    import torch.nn.functional as F  # noqa: F401, F811

    from minivit.exercises.ch8 import ex4


    def my_cutmix(images, labels, box, perm, num_classes):
        raise NotImplementedError  # your code here


    ex4.check(my_cutmix)
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="my_cutmix",
    solution_code="""
import torch.nn.functional as F


def my_cutmix(images, labels, box, perm, num_classes):
    top, left, bottom, right = box
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[perm][..., top:bottom, left:right]  # the partner's box
    height, width = images.shape[-2:]
    lam = 1 - (bottom - top) * (right - left) / (height * width)  # the share each image keeps
    one_hot = F.one_hot(labels, num_classes).float()  # (B, classes)
    return mixed, lam * one_hot + (1 - lam) * one_hot[perm]
""",
    hints=("Two parts: copy the batch and overwrite the box with images[perm]'s box; then weigh the two one-hot "
           "labels by the areas.",
           "lam = 1 - box_area / (H * W); targets = lam * one_hot(labels) + (1 - lam) * one_hot(labels[perm])."),
    checker=_check_cutmix, anchor="## 4. Distillation (DeiT)",
    recognised=("box pasted the wrong way round", "rows and columns swapped", "label weights swapped",
                "one-hot targets"),
)


def _check_distillation(fn) -> None:
    gen = torch.Generator().manual_seed(84)
    for batch, classes, soft in [(6, 10, False), (5, 4, True), (3, 7, False)]:
        cls_logits, dist_logits, teacher_logits = (torch.randn(3, batch, classes, generator=gen) * 2).unbind(0)
        if soft:  # mixup targets: class probabilities
            targets = torch.rand(batch, classes, generator=gen).softmax(dim=-1)
            kind = "mixup targets (B, classes)"
        else:
            targets = torch.randint(0, classes, (batch,), generator=gen)
            kind = "labels (B,)"
        on = f"logits ({batch}, {classes}) and {kind}"
        got = call(fn, cls_logits.clone(), dist_logits.clone(), targets.clone(), teacher_logits.clone(), on=on)
        expected = hard_distillation_loss(cls_logits, dist_logits, targets, teacher_logits)
        hard = teacher_logits.argmax(1)
        compare(got, expected, on=on, what="your loss", wrong={
            "the distillation head learns the teacher's argmax (a hard label), not its probabilities":
                lambda: 0.5 * F.cross_entropy(cls_logits, targets)
                + 0.5 * F.cross_entropy(dist_logits, teacher_logits.softmax(-1)),
            "the heads are swapped: the class head learns the labels, the distillation head the teacher":
                lambda: 0.5 * F.cross_entropy(dist_logits, targets) + 0.5 * F.cross_entropy(cls_logits, hard),
            "the two terms are summed; DeiT averages them (0.5 each)":
                lambda: F.cross_entropy(cls_logits, targets) + F.cross_entropy(dist_logits, hard),
        })


ex5 = Exercise(
    name="ex5", title="DeiT's hard-distillation loss", kind="implement",
    prompt="""
    Write `my_distillation_loss(cls_logits, dist_logits, targets, teacher_logits)`: the student's two heads'
    logits and the frozen teacher's, all `(B, classes)`, and `targets` that are either labels `(B,)` or, for a
    batch made with mixup or CutMix, class probabilities `(B, classes)`. Return DeiT's hard-distillation loss
    (a scalar tensor). The checker tries both kinds of targets.
    """,
    starter="""
    import torch.nn.functional as F  # noqa: F401, F811

    from minivit.exercises.ch8 import ex5


    def my_distillation_loss(cls_logits, dist_logits, targets, teacher_logits):
        raise NotImplementedError  # your code here


    ex5.check(my_distillation_loss)
    # ex5.hint()
    # ex5.solution()
    """,
    answer_name="my_distillation_loss",
    solution_code="""
import torch.nn.functional as F


def my_distillation_loss(cls_logits, dist_logits, targets, teacher_logits):
    teacher_labels = teacher_logits.argmax(dim=-1)  # (B,): the teacher's hard decision
    return 0.5 * F.cross_entropy(cls_logits, targets) + 0.5 * F.cross_entropy(dist_logits, teacher_labels)
""",
    hints=("Two cross-entropies, one per head. Which head learns the true targets, and what exactly does the "
           "other one learn from the teacher?",
           "0.5 * CE(cls_logits, targets) + 0.5 * CE(dist_logits, teacher_logits.argmax(-1)); F.cross_entropy "
           "takes labels and class probabilities alike."),
    checker=_check_distillation, anchor="## 5. Everything at the same small budget",
    recognised=("soft teacher probabilities", "heads swapped", "terms summed"),
)

EXERCISES = [ex1, ex2, ex3, ex4, ex5]
