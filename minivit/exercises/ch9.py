"""Chapter 9 exercises: a resized position table, resampling it, a pretrained ViT at new sizes, InfoNCE, zero-shot."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minivit.clip import clip_loss
from minivit.exercises.base import Exercise, Wrong, call, compare, letter_checker
from minivit.transfer import resample_position_embedding

NOTEBOOK = "09_transfer_and_clip.ipynb"

# ex1: ViT-B/16 (224 px, 16 px patches, width 768, a class token) fine-tuned at 384 px
_OLD_SIZE, _NEW_SIZE, _PATCH, _DIM = 224, 384, 16, 768


def _check_table_shape(answer) -> None:
    try:
        got = tuple(int(n) for n in answer)
    except (TypeError, ValueError) as error:
        raise Wrong(f"answer with a tuple of sizes, e.g. (1, 2, 3); got {answer!r}") from error
    old, new = _OLD_SIZE // _PATCH, _NEW_SIZE // _PATCH
    table = torch.zeros(1, 1 + old * old, _DIM)
    expected = tuple(resample_position_embedding(table, new).shape)
    known = {
        (1, new * new, _DIM): "the class token's row is kept: one row for it, then one per patch",
        (1, 1 + old * old, _DIM): "that is the table at 224 px; at 384 px there are more patches, one row each",
        (1, 1 + new, _DIM): f"{new} patches per side make a grid of {new} x {new} patches, one row each",
        (1, 1 + (_NEW_SIZE // 14) ** 2, _DIM): "the patches stay 16 px; only their number changes",
    }
    if got == expected:
        return
    raise Wrong(known.get(got, f"{got} is not the shape of the resampled table"))


ex1 = Exercise(
    name="ex1", title="the position table at 384 px", kind="predict",
    prompt=f"""
    Predict before you run: torchvision's ViT-B/16 (224 px images, 16 px patches, width {_DIM}, a class token)
    is fine-tuned at 384 px, as its authors did. What is the shape of its position table after
    `resample_position_embedding`? (At 224 px it is `(1, 197, {_DIM})`.)
    """,
    starter="""
    from minivit.exercises.ch9 import ex1

    answer = ...  # a tuple, e.g. (1, 2, 3)
    ex1.check(answer)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="answer",
    solution_code="answer = (1, 1 + (384 // 16) ** 2, 768)  # the class token's row, then 24 x 24 patches\n",
    hints=("How many 16 px patches does a 384 px image have per side? Which row is not a patch?",
           "384 / 16 = 24 patches per side, 24 * 24 = 576 patch rows, plus the class token's row."),
    checker=_check_table_shape, anchor="### 1.2 The course's pretrained model",
    recognised=("class token's row dropped", "the old table", "patches per side not squared",
                "patch size changed"),
)


def _check_resample(fn) -> None:
    gen = torch.Generator().manual_seed(91)
    for prefix, old_grid, new_grid, dim in [(1, (3, 5), (5, 7), 4), (2, (4, 4), (6, 5), 3), (0, (2, 3), (4, 6), 2)]:
        table = torch.randn(1, prefix + old_grid[0] * old_grid[1], dim, generator=gen)
        on = (f"a table {tuple(table.shape)}: {prefix} prefix token(s), a {old_grid[0]}x{old_grid[1]} grid (rows x "
              f"cols) to {new_grid[0]}x{new_grid[1]}")
        got = call(fn, table.clone(), old_grid, new_grid, prefix, on=on)
        expected = resample_position_embedding(table, new_grid, prefix, old_grid)

        def resample(**kwargs):
            return lambda: resample_position_embedding(table, new_grid, prefix, old_grid, **kwargs)

        def transposed():  # the patch rows read as a (cols, rows) grid, resized, and written back that way
            grid = table[:, prefix:].reshape(1, old_grid[1], old_grid[0], dim).permute(0, 3, 2, 1)
            grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
            return torch.cat([table[:, :prefix], grid.permute(0, 3, 2, 1).reshape(1, -1, dim)], dim=1)

        compare(got, expected, on=on, wrong={
            "that is torchvision's convention (align_corners=True); the course's default, timm's, stretches the "
            "patch areas: align_corners=False": resample(align_corners=True),
            "the grid is resized bilinearly; the ViT paper and the course resize bicubically":
                resample(mode="bilinear"),
            "the patch rows are read column by column; they are numbered row by row, (rows, cols)": transposed,
        })


ex2 = Exercise(
    name="ex2", title="resample a position table", kind="implement",
    prompt="""
    Write `my_resample(pos_embed, old_grid, new_grid, num_prefix)`: a table `(1, num_prefix + gh*gw, D)` whose
    first `num_prefix` rows belong to the class token (and a DeiT student's distillation token) and whose
    other rows are the patches of a `gh x gw` grid, row by row. Return `(1, num_prefix + rows*cols, D)`: the
    prefix rows unchanged, the patch rows resized as a D-channel image to `new_grid = (rows, cols)`,
    bicubically, with the course's default convention (`align_corners=False`). Grids are `(rows, cols)` pairs,
    not square, and only grow here.
    """,
    starter="""
    import torch  # noqa: F401, F811
    import torch.nn.functional as F  # noqa: F401, F811

    from minivit.exercises.ch9 import ex2


    def my_resample(pos_embed, old_grid, new_grid, num_prefix):
        raise NotImplementedError  # your code here


    ex2.check(my_resample)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="my_resample",
    solution_code="""
import torch
import torch.nn.functional as F


def my_resample(pos_embed, old_grid, new_grid, num_prefix):
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]  # (1, p, D), (1, gh*gw, D)
    dim = patches.shape[-1]
    image = patches.reshape(1, *old_grid, dim).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    image = F.interpolate(image, size=tuple(new_grid), mode="bicubic", align_corners=False)  # (1, D, rows, cols)
    patches = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)  # (1, rows*cols, D)
    return torch.cat([prefix, patches], dim=1)
""",
    hints=("Split off the prefix rows; make the rest a (1, D, gh, gw) image, resize it with F.interpolate, "
           "and turn it back into rows.",
           "patches.reshape(1, gh, gw, D).permute(0, 3, 1, 2), then F.interpolate(..., size=(rows, cols), "
           "mode='bicubic', align_corners=False), permute(0, 2, 3, 1), reshape, torch.cat with the prefix."),
    checker=_check_resample, anchor="### 1.2 The course's pretrained model",
    recognised=("torchvision's align_corners=True", "bilinear", "grid read column by column"),
)

ex3 = Exercise(
    name="ex3", title="the CIFAR ViT at a new size, without fine-tuning", kind="experiment",
    prompt="""
    Before fine-tuning, how well does the course's pretrained CIFAR ViT (`load_pretrained_cifar_vit()`,
    trained at 32 px on a JPEG q75 re-encoding of CIFAR-10) classify that copy's test images when they are
    upsampled to 48 and 64 px and the model is resized with `resize_vit` (no training at all)? Run the cell:
    it prints the test accuracy at 32 px and, at each new size, with the course's convention and with
    torchvision's. Chance is 10%. What do the numbers say?

    - **A** The resized model still classifies far above chance, but loses accuracy at 48 px and more at
      64 px: its weights carry over, yet its patches now cover less of each object than in training, which
      a fine-tune at the new size has to make up for.
    - **B** At 48 px the accuracy falls to about chance: a ViT cannot use another grid without retraining.
    - **C** The accuracy stays within 2 points of the 32 px figure at both sizes: resolution does not matter.
    - **D** The two resampling conventions differ by more than 10 points at 48 px.
    """,
    starter="""
    import torch  # noqa: F401, F811
    import torch.nn.functional as F  # noqa: F401, F811

    import minivit
    import minivit.data.augment
    import minivit.train
    import minivit.transfer
    from minivit.exercises.ch9 import ex3


    def measure_new_sizes(sizes=(48, 64)):
        model, info = minivit.train.load_pretrained_cifar_vit()
        test = minivit.data.load_cifar10("test", limit=minivit.by_profile(smoke=32, cpu=500, gpu=2000))
        images = minivit.data.augment.normalize(test.images, info["mean"], info["std"])  # (N, 3, 32, 32)
        with torch.no_grad():
            native = (model(images).argmax(1) == test.labels).float().mean().item()
            print(f"32 px, as trained: {native:.1%} ({len(test)} images of {test.source})")
            for size in sizes:
                larger = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
                for convention, align_corners in (("course (timm)", False), ("torchvision", True)):
                    resized = minivit.transfer.resize_vit(model, size, align_corners=align_corners).eval()
                    accuracy = (resized(larger).argmax(1) == test.labels).float().mean().item()
                    print(f"{size} px, {resized.grid_size} x {resized.grid_size} patches, {convention}: {accuracy:.1%}")


    measure_new_sizes()

    answer = ...  # 'A', 'B', 'C' or 'D'
    ex3.check(answer)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="answer",
    solution_code="answer = 'A'  # about 77% at 32 px, about 60% at 48 px (both conventions), about 42% at 64 px\n",
    hints=("Compare each printed accuracy with 10% (chance) and with the 32 px figure, and the two conventions "
           "at 48 px with each other.",
           "The 48 px accuracies are about 60% (within a few points of each other), 64 px about 42%, 32 px about "
           "77%."),
    checker=letter_checker("A", {
        "B": "chance is 10%; the printed 48 px accuracies are far above it",
        "C": "compare the 48 and 64 px lines with the 32 px line: the gaps are far larger than 2 points",
        "D": "the two printed 48 px accuracies are within a few points of each other",
    }),
    anchor="### 1.3 A new task",
    recognised=("B: chance at 48 px", "C: resolution does not matter", "D: conventions differ a lot"),
)


def _check_infonce(fn) -> None:
    gen = torch.Generator().manual_seed(92)
    for batch, width, temperature in [(5, 8, 0.07), (3, 4, 0.5), (6, 3, 1.0)]:
        images = torch.randn(batch, width, generator=gen) * 3
        texts = images + torch.randn(batch, width, generator=gen) * 2  # noisy partners, not unit length
        scale = torch.tensor(math.log(1 / temperature))
        on = f"embeddings ({batch}, {width}), not unit length, temperature {temperature}"
        got = call(fn, images.clone(), texts.clone(), scale.clone(), on=on)
        unit_i, unit_t = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
        expected = clip_loss(unit_i, unit_t, scale)
        logits = scale.exp() * unit_i @ unit_t.T
        targets = torch.arange(batch)
        compare(got, expected, on=on, what="your loss", wrong={
            "only the image-to-text direction: the loss is the mean of the rows' and the columns' cross-entropy":
                F.cross_entropy(logits, targets),
            "the two directions are summed; the loss is their mean": 2 * expected,
            "the embeddings must be normalized to unit length first (cosine similarities)":
                lambda: clip_loss(images, texts, scale),
            "logit_scale is a logarithm: the similarities are multiplied by exp(logit_scale) = 1 / temperature":
                lambda: clip_loss(unit_i, unit_t, scale.log()),
        })


ex4 = Exercise(
    name="ex4", title="symmetric InfoNCE from raw embeddings", kind="implement",
    prompt="""
    Write `my_clip_loss(image_emb, text_emb, logit_scale)`: image and text embeddings `(B, E)` straight out of
    the two encoders' projections (not unit length), image i paired with text i, and `logit_scale` (a scalar
    tensor, the logarithm of 1 / temperature, as `MiniCLIP.logit_scale`). Return CLIP's symmetric InfoNCE loss
    (a scalar tensor).
    """,
    starter="""
    import torch  # noqa: F401, F811
    import torch.nn.functional as F  # noqa: F401, F811

    from minivit.exercises.ch9 import ex4


    def my_clip_loss(image_emb, text_emb, logit_scale):
        raise NotImplementedError  # your code here


    ex4.check(my_clip_loss)
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="my_clip_loss",
    solution_code="""
import torch
import torch.nn.functional as F


def my_clip_loss(image_emb, text_emb, logit_scale):
    image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)  # unit length
    logits = logit_scale.exp() * image_emb @ text_emb.T  # (B, B): images x texts
    targets = torch.arange(len(logits))  # image i belongs with text i
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
""",
    hints=("Normalize, build the (B, B) matrix of scaled cosine similarities, then classify in both directions: "
           "each row's right answer, and each column's, is on the diagonal.",
           "logits = logit_scale.exp() * F.normalize(img) @ F.normalize(txt).T; the mean of "
           "F.cross_entropy(logits, arange(B)) and F.cross_entropy(logits.T, arange(B))."),
    checker=_check_infonce, anchor="### 3.3 Training",
    recognised=("one direction only", "directions summed", "not normalized", "logit_scale not exponentiated"),
)


def _check_zero_shot(fn) -> None:
    gen = torch.Generator().manual_seed(93)
    for images_n, classes, prompts, width in [(7, 3, 4, 8), (4, 5, 2, 6), (2, 2, 3, 4)]:
        image_emb = F.normalize(torch.randn(images_n, width, generator=gen), dim=-1)  # (N, E)
        centres = torch.randn(classes, 1, width, generator=gen)
        prompt_emb = F.normalize(centres + torch.randn(classes, prompts, width, generator=gen), dim=-1)  # (K, P, E)
        on = f"{images_n} image embeddings, {classes} classes x {prompts} prompts, width {width}"
        got = call(fn, image_emb.clone(), prompt_emb.clone(), on=on)
        class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1)  # (K, E): as clip.class_embeddings
        expected = image_emb @ class_emb.T  # (N, K): as clip.zero_shot_logits
        compare(got, expected, on=on, what="your logits", wrong={
            "the mean of the prompts' unit vectors is shorter than one (averaging the prompts' cosines gives the "
            "same): renormalize each class embedding": image_emb @ prompt_emb.mean(dim=1).T,
            "each class scores its best prompt; prompt ensembling averages the prompts' embeddings":
                lambda: torch.einsum("ne,kpe->nkp", image_emb, prompt_emb).amax(dim=-1),
            "one row per image and one column per class: (N, K)": expected.T,
        })


ex5 = Exercise(
    name="ex5", title="zero-shot logits with prompt ensembling", kind="implement",
    prompt="""
    Write `my_zero_shot(image_emb, prompt_emb)`: unit-length image embeddings `(N, E)` and the unit-length text
    embeddings of P prompts for each of K classes, `(K, P, E)` (e.g. "a photo of a small red circle", "a photo
    of a big blue circle", ... for the class circle). Return the zero-shot logits `(N, K)`: each image's cosine
    similarity with each class embedding, the class embedding being the prompts' ensemble (as
    `clip.class_embeddings`, then `clip.zero_shot_logits`). `logits.argmax(1)` is then the predicted class.
    """,
    starter="""
    import torch.nn.functional as F  # noqa: F401, F811

    from minivit.exercises.ch9 import ex5


    def my_zero_shot(image_emb, prompt_emb):
        raise NotImplementedError  # your code here


    ex5.check(my_zero_shot)
    # ex5.hint()
    # ex5.solution()
    """,
    answer_name="my_zero_shot",
    solution_code="""
import torch.nn.functional as F


def my_zero_shot(image_emb, prompt_emb):
    class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1)  # (K, E): the prompts averaged, back to unit length
    return image_emb @ class_emb.T  # (N, K): cosine similarities
""",
    hints=("First one vector per class from its prompts, of unit length, then a matrix product.",
           "class_emb = F.normalize(prompt_emb.mean(dim=1), dim=-1); return image_emb @ class_emb.T."),
    checker=_check_zero_shot, anchor="### 3.5 What the temperature does",
    recognised=("class embedding not renormalized", "best prompt instead of the ensemble", "transposed logits"),
)


EXERCISES = [ex1, ex2, ex3, ex4, ex5]
