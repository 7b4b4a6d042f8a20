"""Chapter 7 exercises: the class token's map, attention rollout, mean attention distance, how far heads look."""
from __future__ import annotations

import torch

from minivit.exercises.base import Exercise, call, compare, compare_number, letter_checker
from minivit.viz.maps import attention_rollout, mean_attention_distance, patch_distance_matrix, query_maps

NOTEBOOK = "07_attention_maps.ipynb"


def _random_attention(gen, *shape) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * 2).softmax(dim=-1)


def _check_cls_map(fn) -> None:
    gen = torch.Generator().manual_seed(13)
    for heads, grid in [(3, (2, 3)), (1, (4, 4)), (2, (3, 1))]:
        tokens = 1 + grid[0] * grid[1]
        attention = _random_attention(gen, heads, tokens, tokens)
        on = f"attention {tuple(attention.shape)} = (heads, T, T) and a {grid[0]}x{grid[1]} grid"
        got = call(fn, attention.clone(), grid, on=on)
        expected = query_maps(attention, grid)
        column = attention[..., 1:, 0].reshape(heads, *grid)
        compare(got, expected, on=on, wrong={
            "that is how much each patch attends to the class token (a column); the class token's map is its "
            "row: query 0, keys 1:": column,
            "the patch grid is filled column by column; the patches are numbered row by row":
                attention[..., 0, 1:].reshape(heads, grid[1], grid[0]).transpose(-1, -2),
            "the row was renormalized over the patches; the course leaves the class token's own weight out "
            "without rescaling": lambda: (lambda r: (r / r.sum(-1, keepdim=True)).reshape(heads, *grid))(
                attention[..., 0, 1:]),
        })


ex1 = Exercise(
    name="ex1", title="where the class token looks", kind="implement",
    prompt="""
    Write `my_cls_map(attention, grid_size)`: for one image's attention (H, T, T) of a ViT with a class token
    (token 0) followed by the patches row by row, return (H, gh, gw): for each head, how much the class
    token attends to each patch. The checker uses non-square grids.
    """,
    starter="""
    from minivit.exercises.ch7 import ex1


    def my_cls_map(attention, grid_size):
        raise NotImplementedError  # your code here


    ex1.check(my_cls_map)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="my_cls_map",
    solution_code="""
def my_cls_map(attention, grid_size):
    grid_h, grid_w = grid_size
    row = attention[..., 0, 1:]  # (H, N): the class token is the query, the patches the keys
    return row.reshape(*row.shape[:-1], grid_h, grid_w)
""",
    hints=("attention[..., i, j] is how much query i attends to key j. Which index is the class token here?",
           "Take row 0 (the class token as query), drop key 0 (itself), reshape the N patch weights to (gh, gw)."),
    checker=_check_cls_map, anchor="## 3. Attention rollout",
    recognised=("column instead of row (transposed axis)", "grid filled column by column", "renormalized row"),
)


def _check_rollout(fn) -> None:
    gen = torch.Generator().manual_seed(14)
    for layers, heads, tokens in [(3, 2, 5), (1, 3, 4), (4, 1, 3)]:
        attention = _random_attention(gen, layers, heads, tokens, tokens)
        on = f"attention {tuple(attention.shape)} = (layers, heads, T, T)"
        got = call(fn, attention.clone(), on=on)
        expected = attention_rollout(attention)
        compare(got, expected, on=on, wrong={
            "the residual connection is missing: each layer passes on 0.5 * A + 0.5 * I (then renormalized)":
                lambda: attention_rollout(attention, residual=False),
            "the layers are chained in the wrong order: the last layer goes on the left, R = A_L ... A_1":
                lambda: attention_rollout(attention.flip(0)),
            "the heads are fused with the max; the course's rollout averages them":
                lambda: attention_rollout(attention, head_fusion="max"),
        })


ex2 = Exercise(
    name="ex2", title="attention rollout", kind="implement",
    prompt="""
    Write `my_rollout(attention)` for one image's attention of all layers, (L, H, T, T) -> (T, T): average the
    heads, account for the residual connection with `0.5 * A + 0.5 * I`, renormalize the rows, and chain the
    layers, `R = A_L ... A_2 A_1`. The checker compares with `minivit.viz.maps.attention_rollout`.
    """,
    starter="""
    import torch  # noqa: F401, F811

    from minivit.exercises.ch7 import ex2


    def my_rollout(attention):
        raise NotImplementedError  # your code here


    ex2.check(my_rollout)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="my_rollout",
    solution_code="""
import torch


def my_rollout(attention):
    fused = attention.mean(dim=1)  # (L, T, T): heads averaged
    fused = 0.5 * fused + 0.5 * torch.eye(fused.shape[-1])  # the residual connection
    fused = fused / fused.sum(dim=-1, keepdim=True)
    joint = fused[0]
    for layer in fused[1:]:
        joint = layer @ joint  # the later layer on the left
    return joint
""",
    hints=("Three per-layer steps (fuse heads, add the identity, renormalize), then a running matrix product. "
           "Which side does the next layer multiply on?",
           "joint = fused[0]; for each later layer: joint = layer @ joint."),
    checker=_check_rollout, anchor="## 4. Mean attention distance",
    recognised=("no residual", "layers chained in the wrong order", "max head fusion"),
)


def _check_distance(fn) -> None:
    gen = torch.Generator().manual_seed(15)
    for grid, patch in [((4, 4), 4), ((2, 3), 16), ((3, 3), 1)]:
        tokens = 1 + grid[0] * grid[1]
        attention = _random_attention(gen, tokens, tokens)
        on = f"one head's attention {tuple(attention.shape)}, a {grid[0]}x{grid[1]} grid of {patch}-pixel patches"
        got = call(fn, attention.clone(), grid, patch, on=on)
        expected = mean_attention_distance(attention, grid, patch).item()
        distances = patch_distance_matrix(grid, patch)
        unnormalized = (attention[1:, 1:] * distances).sum(-1).mean().item()
        compare_number(got, expected, on=on, rel=1e-4, what="your distance", wrong={
            "that is in patches; multiply by the patch size to get pixels": expected / patch,
            "the weights on the patches were not renormalized after dropping the class token's column":
                unnormalized,
            "you summed over the query patches; average them": expected * grid[0] * grid[1],
        })


ex3 = Exercise(
    name="ex3", title="the mean attention distance of one head", kind="implement",
    prompt="""
    Write `my_mean_distance(attention, grid_size, patch_size)` for one head of one image, attention (T, T) with a
    class token first: for each query patch, the distance in pixels to each key patch (centre to centre),
    weighted by the attention renormalized over the patches (the class token's weight left out), then
    averaged over the query patches. Return a number. `minivit.viz.maps.patch_distance_matrix(grid_size,
    patch_size)` gives the (N, N) distances.
    """,
    starter="""
    from minivit.exercises.ch7 import ex3
    from minivit.viz.maps import patch_distance_matrix  # noqa: F401, F811


    def my_mean_distance(attention, grid_size, patch_size):
        raise NotImplementedError  # your code here


    ex3.check(my_mean_distance)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="my_mean_distance",
    solution_code="""
from minivit.viz.maps import patch_distance_matrix


def my_mean_distance(attention, grid_size, patch_size):
    patches = attention[1:, 1:]  # (N, N): patch queries, patch keys
    patches = patches / patches.sum(dim=-1, keepdim=True)  # renormalized without the class token
    per_query = (patches * patch_distance_matrix(grid_size, patch_size)).sum(dim=-1)  # (N,)
    return per_query.mean().item()
""",
    hints=("Drop the class token's row and column first; the remaining rows no longer sum to one.",
           "Renormalize the (N, N) rows, multiply by patch_distance_matrix(grid_size, patch_size), sum over keys, "
           "average over queries."),
    checker=_check_distance, anchor="## 5. Position-embedding similarity",
    recognised=("in patches, not pixels", "not renormalized", "summed over queries"),
)

ex4 = Exercise(
    name="ex4", title="how far do the small ViT's heads look?", kind="experiment",
    prompt="""
    Run the cell: it prints each head's mean attention distance for chapter 4's small ViT
    (`load_pretrained_cifar_vit()`: 4 layers, 30 minutes of training on a CPU) on CIFAR-10 test images (a JPEG
    q75 re-encoding of CIFAR-10), next to the distance of a head that attends uniformly to all patches. In the
    ViT paper (ImageNet, 224 px) some early heads attend very locally. What do you see here?

    - **A** Every head, in every layer, is within about a quarter of the uniform head's distance: on 32 px
      images with 64 patches this small ViT looks almost globally from its first layer.
    - **B** The first layer's heads are very local (under 5 px), the last ones global.
    - **C** The distances shrink steadily with depth.
    - **D** Every head attends only to its own patch (distance about 0).
    """,
    starter="""
    import minivit
    import minivit.data.augment
    import minivit.train
    import minivit.viz
    from minivit.exercises.ch7 import ex4


    def measure_head_distances():
        model, info = minivit.train.load_pretrained_cifar_vit()
        test = minivit.data.load_cifar10("test", limit=minivit.by_profile(smoke=16, cpu=256, gpu=1000))
        images = minivit.data.augment.normalize(test.images, info["mean"], info["std"])
        _, maps = minivit.viz.capture_attention(model, images)  # (layers, images, heads, T, T)
        per_head = minivit.viz.mean_attention_distance(maps, model.grid_size, model.patch_size).mean(dim=1)
        uniform = minivit.viz.patch_distance_matrix(model.grid_size, model.patch_size).mean().item()
        for layer, distances in enumerate(per_head.tolist()):
            print(f"layer {layer}: " + ", ".join(f"{d:.1f}" for d in distances) + " px")
        print(f"a uniform head: {uniform:.1f} px ({len(test)} images of {test.source})")


    measure_head_distances()

    answer = ...  # 'A', 'B', 'C' or 'D'
    ex4.check(answer)
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="answer",
    solution_code="answer = 'A'  # about 12.5 to 18 px against 16.5 px for a uniform head\n",
    hints=("Compare the smallest and the largest printed distances with the uniform head's.",
           "All printed values lie between about 12 and 18 px; the uniform head's is about 16.5 px."),
    checker=letter_checker("A", {
        "B": "look at layer 0's printed distances: none is under 5 px",
        "C": "the last layer's distances are not smaller than the first's in the printed table",
        "D": "a head looking at its own patch would print about 0 px; every printed distance is above 10 px",
    }),
    anchor="## 6. Patch-embedding filters",
    recognised=("B: early heads local", "C: shrinking with depth", "D: own patch only"),
)

EXERCISES = [ex1, ex2, ex3, ex4]
