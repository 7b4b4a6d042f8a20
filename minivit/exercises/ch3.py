"""Chapter 3 exercises: patches, sequence length, 2D sin-cos positions, position embeddings removed, parameters."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from minivit.exercises.base import Exercise, Wrong, call, compare, compare_number
from minivit.runtime import by_profile
from minivit.transformer import sinusoidal_position_encoding
from minivit.vit import ViT, ViTConfig, patchify, sincos_2d_position_embedding

NOTEBOOK = "03_vit_patch_embedding.ipynb"


def _check_patchify(fn) -> None:
    gen = torch.Generator().manual_seed(5)
    for batch, channels, height, width, p in [(2, 3, 8, 12, 4), (1, 1, 6, 6, 3), (2, 2, 4, 8, 2)]:
        images = torch.randn(batch, channels, height, width, generator=gen)
        on = f"images {tuple(images.shape)} with patch size {p}"
        got = call(fn, images.clone(), p, on=on)
        expected = patchify(images, p)
        rows, cols = height // p, width // p
        grid = expected.reshape(batch, rows, cols, -1)
        compare(got, expected, on=on, wrong={
            "each patch is flattened channels first (C, P, P), as F.unfold does; the course flattens "
            "(row, column, channel), channels last": lambda: F.unfold(images, p, stride=p).transpose(1, 2),
            "the patches are ordered column by column; go row by row (like reading a page)":
                grid.transpose(1, 2).reshape(batch, rows * cols, -1),
        })


ex1 = Exercise(
    name="ex1", title="patchify by reshape", kind="implement",
    prompt="""
    Write `my_patchify(images, patch_size)`: (B, C, H, W) -> (B, N, P*P*C), patches row by row, each patch
    flattened as (row, column, channel), with one `reshape`, one `permute` and one more `reshape`.
    The checker uses non-square images, so a swapped grid shows.
    """,
    starter="""
    from minivit.exercises.ch3 import ex1


    def my_patchify(images, patch_size):
        raise NotImplementedError  # your code here


    ex1.check(my_patchify)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="my_patchify",
    solution_code="""
def my_patchify(images, patch_size):
    b, c, h, w = images.shape
    p = patch_size
    patches = images.reshape(b, c, h // p, p, w // p, p)  # (B, C, rows, P, cols, P)
    patches = patches.permute(0, 2, 4, 3, 5, 1)  # (B, rows, cols, P, P, C)
    return patches.reshape(b, (h // p) * (w // p), p * p * c)
""",
    hints=("Split H into (rows, P) and W into (cols, P) with one reshape; then bring the axes into the order "
           "(B, rows, cols, P, P, C).",
           "images.reshape(B, C, H/P, P, W/P, P).permute(0, 2, 4, 3, 5, 1), then merge (rows, cols) and (P, P, C)."),
    checker=_check_patchify, anchor="## 2. Patch embedding",
    recognised=("channels-first flattening (F.unfold order)", "column-major patch order"),
)


def _check_sequence_length(answer) -> None:
    compare_number(answer, 197, what="your sequence length", wrong={
        "that is the number of patches; the class token is one more token": 196,
        "that is the number of patches along one side; the sequence holds all 14 x 14 of them, plus one": 14,
        "that is one side plus the class token; the patches form a 14 x 14 grid": 15,
        "that counts 16 x 16 patches; 224 / 16 = 14 patches per side": 257,
    })


ex2 = Exercise(
    name="ex2", title="how long is ViT-B/16's sequence?", kind="predict",
    prompt="""
    ViT-B/16 reads 224 x 224 images in 16 x 16 patches and classifies from a class token. How many tokens
    does its encoder process per image?
    """,
    starter="""
    from minivit.exercises.ch3 import ex2

    answer = ...  # a number
    ex2.check(answer)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="answer",
    solution_code="answer = (224 // 16) ** 2 + 1  # 196 patches and the class token: 197\n",
    hints=("How many patches fit along one side, how many in the grid, and what token is added?",
           "224 / 16 = 14 per side, 14 * 14 patches, and one class token in front."),
    checker=_check_sequence_length, anchor="## 4. Position embeddings",
    recognised=("196: no class token", "14: one side only", "15: one side + class token", "257: 16 per side"),
)


def _check_sincos(fn) -> None:
    for grid_h, grid_w, dim in [(3, 5, 8), (4, 4, 16), (1, 2, 4), (2, 7, 32)]:
        on = f"a {grid_h} x {grid_w} grid with dim {dim}"
        got = call(fn, grid_h, grid_w, dim, on=on)
        expected = sincos_2d_position_embedding(grid_h, grid_w, dim)
        half = dim // 2
        rows, cols = sinusoidal_position_encoding(grid_h, half), sinusoidal_position_encoding(grid_w, half)
        swapped = torch.cat([cols[None, :, :].expand(grid_h, grid_w, half),
                             rows[:, None, :].expand(grid_h, grid_w, half)], dim=-1).reshape(-1, dim)
        column_major = torch.cat([rows[None, :, :].expand(grid_w, grid_h, half),
                                  cols[:, None, :].expand(grid_w, grid_h, half)], dim=-1).reshape(-1, dim)
        compare(got, expected, on=on, atol=1e-4, wrong={
            "the halves are swapped: the first half of the channels encodes the row, the second the column":
                swapped,
            "the patches are listed column by column; list them row by row (patch r * grid_w + c)": column_major,
            "that is the 1D encoding of the flattened index: it does not know which patches share a row":
                sinusoidal_position_encoding(grid_h * grid_w, dim),
        })


ex3 = Exercise(
    name="ex3", title="2D sin-cos position embeddings", kind="implement",
    prompt="""
    Write `my_sincos_2d(grid_h, grid_w, dim)`: a (grid_h * grid_w, dim) table, patches row by row, whose first
    dim/2 channels are chapter 2's 1D sinusoidal encoding of the patch's row and whose last dim/2 channels
    encode its column. You may use `minivit.transformer.sinusoidal_position_encoding(num_positions, dim)`.
    """,
    starter="""
    from minivit.exercises.ch3 import ex3
    from minivit.transformer import sinusoidal_position_encoding  # noqa: F401, F811


    def my_sincos_2d(grid_h, grid_w, dim):
        raise NotImplementedError  # your code here


    ex3.check(my_sincos_2d)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="my_sincos_2d",
    solution_code="""
import torch

from minivit.transformer import sinusoidal_position_encoding


def my_sincos_2d(grid_h, grid_w, dim):
    rows = sinusoidal_position_encoding(grid_h, dim // 2)  # (grid_h, dim/2)
    cols = sinusoidal_position_encoding(grid_w, dim // 2)  # (grid_w, dim/2)
    table = torch.cat([rows[:, None, :].expand(grid_h, grid_w, dim // 2),
                       cols[None, :, :].expand(grid_h, grid_w, dim // 2)], dim=-1)  # (grid_h, grid_w, dim)
    return table.reshape(grid_h * grid_w, dim)
""",
    hints=("Encode the rows and the columns separately with dim/2 channels each, then give every patch (r, c) "
           "the row code of r next to the column code of c.",
           "Broadcast rows[:, None, :] and cols[None, :, :] to (grid_h, grid_w, dim/2), concatenate on the last "
           "axis, reshape to (grid_h * grid_w, dim)."),
    checker=_check_sincos, anchor="## 5. The full ViT",
    recognised=("row/column halves swapped", "column-major patch order", "1D encoding of the flattened index"),
)


def _measure_drop(model, images, labels) -> float:
    saved = model.pos_embed.detach().clone()
    model.eval()
    with torch.no_grad():
        before = (model(images).argmax(1) == labels).float().mean().item()
        model.pos_embed.zero_()
        after = (model(images).argmax(1) == labels).float().mean().item()
        model.pos_embed.copy_(saved)
    return 100 * (before - after)


@functools.lru_cache(maxsize=1)
def _shipped_vit_and_expected():
    """The shipped ViT (loaded once), random images labelled with its own answers, and its drop on them."""
    from minivit.train import load_pretrained_cifar_vit

    model, _ = load_pretrained_cifar_vit()
    model.eval()
    gen = torch.Generator().manual_seed(6)
    images = torch.randn(by_profile(smoke=16, cpu=64, gpu=64), 3, 32, 32, generator=gen)
    with torch.no_grad():
        labels = model(images).argmax(1)  # the model's own answers: 100% before removing the positions
    saved = model.pos_embed.detach().clone()
    return model, images, labels, saved, _measure_drop(model, images, labels)


def _check_drop(fn) -> None:
    model, images, labels, saved, expected = _shipped_vit_and_expected()
    on = f"the shipped ViT and {len(images)} random images labelled with its own predictions"
    try:
        got = call(fn, model, images.clone(), labels.clone(), on=on)
        changed = not torch.equal(model.pos_embed.detach(), saved)
    finally:
        with torch.no_grad():
            model.pos_embed.copy_(saved)  # the cached model stays intact whatever the learner's code did
            model.eval()
    if changed:
        raise Wrong("your function left the model's pos_embed changed: save it and restore it afterwards "
                    "(or work on copy.deepcopy(model)), or every later cell runs without positions")
    compare_number(got, expected, on=on, abs_tol=0.01, rel=0, what="your accuracy drop", wrong={
        "that is a fraction; give the drop in percentage points (x 100)": expected / 100,
        "the sign is reversed: a drop is accuracy with positions minus accuracy without": -expected,
        "that is the accuracy without positions; subtract it from the accuracy with them": 100 - expected,
    })
    return (f"On the checker's {len(images)} random images (labelled with the model's own answers) the drop is "
            f"{expected:.1f} points; now run it on the test images.")


ex4 = Exercise(
    name="ex4", title="remove the position embeddings of the trained ViT", kind="experiment",
    prompt="""
    Chapter 4's plain ViT (`vit_cifar_small`) ships trained. Write `my_accuracy_drop(model, images, labels)`: the
    test accuracy lost, in percentage points, when the model's position embeddings (`model.pos_embed`) are
    set to zero; leave the model as you found it. Then run it on CIFAR-10 test images (the offline copy is a
    JPEG q75 re-encoding of CIFAR-10, so accuracies differ from the canonical set by about a point) and
    explain the result: what does a ViT without positions see?
    """,
    starter="""
    import minivit
    import minivit.data.augment
    import minivit.train
    from minivit.exercises.ch3 import ex4

    shipped_vit, shipped_vit_info = minivit.train.load_pretrained_cifar_vit()
    cifar_test = minivit.data.load_cifar10("test", limit=minivit.by_profile(smoke=200, cpu=2000, gpu=10000))
    cifar_inputs = minivit.data.augment.normalize(cifar_test.images, shipped_vit_info["mean"], shipped_vit_info["std"])


    def my_accuracy_drop(model, images, labels):
        raise NotImplementedError  # your code here


    ex4.check(my_accuracy_drop)
    # drop = my_accuracy_drop(shipped_vit, cifar_inputs, cifar_test.labels)
    # print(f"{drop:.1f} points lost without positions, on {len(cifar_test)} images of {cifar_test.source}")
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="my_accuracy_drop",
    solution_code="""
import torch


def my_accuracy_drop(model, images, labels):
    saved = model.pos_embed.detach().clone()
    model.eval()
    with torch.no_grad():
        before = (model(images).argmax(1) == labels).float().mean().item()
        model.pos_embed.zero_()
        after = (model(images).argmax(1) == labels).float().mean().item()
        model.pos_embed.copy_(saved)  # leave the model as it was
    return 100 * (before - after)
""",
    hints=("Measure the accuracy, zero the embeddings under torch.no_grad(), measure again, and put the saved "
           "embeddings back.",
           "saved = model.pos_embed.detach().clone(); model.pos_embed.zero_(); ...; model.pos_embed.copy_(saved); "
           "return 100 * (before - after)."),
    checker=_check_drop, anchor="## 6. ViT-B/16",
    recognised=("model left changed", "fraction instead of points", "sign reversed", "accuracy instead of drop"),
)


def _count(model, keep=lambda name, p: True) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if keep(name, p))


def _check_vit_params(fn) -> None:
    configs = [ViTConfig(), ViTConfig(image_size=32, patch_size=8, dim=64, depth=2, num_heads=2, mlp_dim=96),
               ViTConfig(dim=32, depth=1, num_heads=4, mlp_dim=64, pool="mean"),
               ViTConfig(dim=32, depth=3, num_heads=2, mlp_dim=48, pos_embed="sincos2d", num_classes=100)]
    for config in configs:
        model = ViT(config)
        on = (f"ViTConfig(image_size={config.image_size}, patch_size={config.patch_size}, dim={config.dim}, "
              f"depth={config.depth}, mlp_dim={config.mlp_dim}, pool={config.pool!r}, "
              f"pos_embed={config.pos_embed!r}, num_classes={config.num_classes})")
        got = call(fn, config, on=on)
        compare_number(got, _count(model), on=on, what="your count", wrong={
            "the LayerNorms have parameters too (a scale and a shift per channel, 2 per block and a final one)":
                _count(model, lambda n, p: "norm" not in n),
            "you forgot the biases": _count(model, lambda n, p: not n.endswith("bias")),
            "you forgot the class token and/or the learned position embeddings":
                _count(model, lambda n, p: n not in ("cls_token", "pos_embed")),
            "with pos_embed='sincos2d' the positions are a fixed table, not parameters":
                _count(model) + model.num_tokens * config.dim if config.pos_embed == "sincos2d" else -1,
            "a mean-pooled ViT has no class token": _count(model) + config.dim if config.pool == "mean" else -1,
            "you forgot the classification head": _count(model, lambda n, p: not n.startswith("head")),
        })


ex5 = Exercise(
    name="ex5", title="the parameter count of any ViT configuration", kind="implement",
    prompt="""
    Write `my_vit_params(config)`: the number of parameters of `ViT(config)` from the fields of a `ViTConfig`
    alone (image_size, patch_size, in_channels, dim, depth, mlp_dim, num_classes, pool, pos_embed). The
    checker tries a class-token ViT, a mean-pooled one and one with fixed sin-cos positions.
    """,
    starter="""
    from minivit.exercises.ch3 import ex5


    def my_vit_params(config):
        raise NotImplementedError  # your code here


    ex5.check(my_vit_params)
    # ex5.hint()
    # ex5.solution()
    """,
    answer_name="my_vit_params",
    solution_code="""
def my_vit_params(config):
    d, m = config.dim, config.mlp_dim
    patches = (config.image_size // config.patch_size) ** 2
    tokens = patches + (1 if config.pool == "cls" else 0)
    embed = config.in_channels * config.patch_size ** 2 * d + d  # the strided convolution
    cls = d if config.pool == "cls" else 0
    pos = tokens * d if config.pos_embed == "learned" else 0  # sincos2d is a fixed buffer
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
    head = d * config.num_classes + config.num_classes
    return embed + cls + pos + config.depth * block + 2 * d + head  # + the final LayerNorm
""",
    hints=("List the pieces: patch embedding, class token, position embeddings, per block (2 LayerNorms, "
           "attention, MLP), the final LayerNorm, the head. Which exist for pool='mean' or pos_embed='sincos2d'?",
           "Per block: 2 * 2d (LayerNorms) + 3d^2 + 3d (qkv) + d^2 + d (proj) + dm + m + md + d (MLP). The "
           "learned table is (patches + 1) x d with a class token; sincos2d adds no parameters."),
    checker=_check_vit_params, anchor="## 7. Loading torchvision",
    recognised=("LayerNorms forgotten", "biases forgotten", "class token / positions forgotten",
                "sincos2d counted as parameters", "class token counted for a mean-pooled ViT", "head forgotten"),
)

EXERCISES = [ex1, ex2, ex3, ex4, ex5]
