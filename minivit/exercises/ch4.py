"""Chapter 4 exercises: the warmup + cosine schedule, weight-decay groups, label smoothing, flips measured."""
from __future__ import annotations

import math

import torch
from torch import nn

from minivit.exercises.base import Exercise, Wrong, call, compare, letter_checker
from minivit.train.schedule import param_groups, warmup_cosine

NOTEBOOK = "04_training_vit_cifar10.ipynb"


def _reference_lrs(total: int, warmup: int, base_lr: float) -> torch.Tensor:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = warmup_cosine(optimizer, total, warmup)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return torch.tensor(lrs, dtype=torch.float64)


def _cosine(step, start, length, base_lr):
    return base_lr * 0.5 * (1 + math.cos(math.pi * (step - start) / length))


def _check_schedule(fn) -> None:
    for total, warmup, base_lr in [(20, 5, 1e-3), (12, 0, 0.5), (30, 10, 2e-3), (6, 1, 1.0)]:
        on = f"total_steps {total}, warmup_steps {warmup}, base_lr {base_lr}"
        got = torch.tensor([float(call(fn, s, total, warmup, base_lr, on=f"step {s} of {on}")) for s in range(total)],
                           dtype=torch.float64)
        expected = _reference_lrs(total, warmup, base_lr)
        w = max(warmup, 1)

        def variant(warm, cos_start, cos_len):
            return torch.tensor([warm(s) if s < warmup else _cosine(s, cos_start, cos_len, base_lr)
                                 for s in range(total)], dtype=torch.float64)

        compare(got, expected, on=on, rtol=1e-6, atol=1e-12, what="the learning rates", wrong={
            "the warmup starts at 0: the first step would not train at all; LinearLR starts at lr / warmup_steps":
                variant(lambda s: base_lr * s / w, warmup, total - warmup),
            "the warmup is (step + 1) / warmup_steps * lr; torch's LinearLR goes from lr / warmup_steps at step 0 "
            "to lr at step warmup_steps in equal steps":
                variant(lambda s: base_lr * (s + 1) / w, warmup, total - warmup),
            "the cosine runs over all total_steps; it starts after the warmup and lasts total_steps - warmup_steps":
                variant(lambda s: base_lr * (1 / w + (1 - 1 / w) * s / w), 0, total),
            "there is no warmup: the first warmup_steps must ramp up from lr / warmup_steps":
                torch.tensor([_cosine(s, 0, total, base_lr) for s in range(total)], dtype=torch.float64),
        })


ex1 = Exercise(
    name="ex1", title="the warmup + cosine schedule", kind="implement",
    prompt="""
    Write `my_lr_at(step, total_steps, warmup_steps, base_lr)`: the learning rate that
    `minivit.train.schedule.warmup_cosine` gives at optimizer step `step` (0-based), i.e. a linear warmup
    as `torch.optim.lr_scheduler.LinearLR(start_factor=1 / warmup_steps)` over `warmup_steps` steps, then a
    cosine from `base_lr` down to 0 over the remaining `total_steps - warmup_steps` steps.
    """,
    starter="""
    from minivit.exercises.ch4 import ex1


    def my_lr_at(step, total_steps, warmup_steps, base_lr):
        raise NotImplementedError  # your code here


    ex1.check(my_lr_at)
    # ex1.hint()
    # ex1.solution()
    """,
    answer_name="my_lr_at",
    solution_code="""
import math


def my_lr_at(step, total_steps, warmup_steps, base_lr):
    if step < warmup_steps:  # LinearLR: from base_lr / warmup_steps at step 0 to base_lr at step warmup_steps
        start = 1 / warmup_steps
        return base_lr * (start + (1 - start) * step / warmup_steps)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))
""",
    hints=("Two pieces: a straight line during the warmup, then half a cosine period. Where does each start, "
           "and how long does the cosine last?",
           "Warmup: base_lr * (1/w + (1 - 1/w) * step / w). Then progress = (step - w) / (total - w) and "
           "lr = base_lr * (1 + cos(pi * progress)) / 2."),
    checker=_check_schedule, anchor="## 4. Training the ViT",
    recognised=("warmup from 0", "warmup (step + 1) / w", "cosine over all steps", "no warmup"),
)


def _toy_model() -> nn.Module:
    from minivit.vit import ViT

    return ViT(image_size=8, patch_size=4, dim=16, depth=1, num_heads=2, mlp_dim=32, num_classes=3)


def _check_decay(fn) -> None:
    model = _toy_model()
    names = {id(p): n for n, p in model.named_parameters()}
    decay_ref, no_decay_ref = ({names[id(p)] for p in group["params"]} for group in param_groups(model, 0.05))
    on = "a one-block ViT"
    got = call(fn, model, on=on)
    if not isinstance(got, tuple) or len(got) != 2:
        raise Wrong(f"return two lists of parameter names, (decay, no_decay); got {type(got).__name__}")
    decay, no_decay = set(got[0]), set(got[1])
    if decay == decay_ref and no_decay == no_decay_ref:
        return
    everything = decay_ref | no_decay_ref
    biases = {n for n in everything if n.endswith("bias")}
    norms = {n for n in everything if "norm" in n and n.endswith("weight")}
    tokens = {"cls_token", "pos_embed"}
    if decay == everything:
        raise Wrong("every parameter decays: norms, biases and the tokens should not be pulled towards 0")
    if decay == no_decay_ref and no_decay == decay_ref:
        raise Wrong("the two lists are swapped: the matrices of Linear and Conv layers decay, the rest does not")
    if decay == decay_ref | biases:
        raise Wrong(f"the biases decay ({sorted(biases)[0]}, ...): shifts are not a measure of complexity")
    if decay == decay_ref | norms:
        raise Wrong(f"the LayerNorm scales decay ({sorted(norms)[0]}, ...): pulling them to 0 shrinks the "
                    "normalized signal")
    if decay == decay_ref | tokens:
        raise Wrong("the class token and the position embeddings decay: they are embeddings, not weights")
    extra, missing = sorted(decay - decay_ref), sorted(decay_ref - decay)
    raise Wrong(f"on {on}: should not decay: {extra[:3]}; should decay: {missing[:3]}")


ex2 = Exercise(
    name="ex2", title="which parameters get weight decay", kind="implement",
    prompt="""
    AdamW's weight decay should shrink the weight matrices of Linear and Conv layers only. Write
    `my_split_decay(model)` returning two lists of parameter names, `(decay, no_decay)`: biases, LayerNorm
    parameters, the class token and the position embeddings go to `no_decay`. The checker compares with
    `minivit.train.schedule.param_groups` on a small ViT.
    """,
    starter="""
    from minivit.exercises.ch4 import ex2


    def my_split_decay(model):
        raise NotImplementedError  # your code here: return (decay_names, no_decay_names)


    ex2.check(my_split_decay)
    # ex2.hint()
    # ex2.solution()
    """,
    answer_name="my_split_decay",
    solution_code="""
def my_split_decay(model):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        skip = param.ndim < 2 or name.rsplit(".", 1)[-1] in ("cls_token", "pos_embed")
        (no_decay if skip else decay).append(name)
    return decay, no_decay
""",
    hints=("Look at param.ndim: what do biases and LayerNorm parameters have in common that weight matrices "
           "and convolution kernels do not?",
           "param.ndim < 2 catches biases and norms; the class token and pos_embed are 3-D, so name them."),
    checker=_check_decay, anchor="## 4. Training the ViT",
    recognised=("everything decays", "lists swapped", "biases decay", "norm scales decay", "tokens decay"),
)


def _check_smoothing(fn) -> None:
    gen = torch.Generator().manual_seed(7)
    for batch, classes, eps in [(5, 10, 0.1), (3, 4, 0.2), (2, 2, 0.0), (4, 3, 0.5)]:
        labels = torch.randint(0, classes, (batch,), generator=gen)
        on = f"{batch} labels, {classes} classes, eps {eps}"
        got = call(fn, labels.clone(), classes, eps, on=on)
        onehot = torch.nn.functional.one_hot(labels, classes).double()
        expected = (1 - eps) * onehot + eps / classes
        compare(got, expected, on=on, wrong={
            "eps / (K - 1) on the other classes and 1 - eps on the true one is another recipe; PyTorch's "
            "label_smoothing (the one the course trains with) spreads eps over all K classes, the true one included":
                (1 - eps) * onehot + eps / (classes - 1) * (1 - onehot),
            "the rows do not sum to 1: the true class keeps 1 - eps and also gets its share eps / K":
                (1 - eps) * onehot + eps / classes * (1 - onehot),
            "the true class keeps 1: subtract eps from it": onehot + eps / classes,
        })


ex3 = Exercise(
    name="ex3", title="label smoothing targets", kind="implement",
    prompt="""
    Write `my_smooth_targets(labels, num_classes, eps)`: the (B, K) target distributions that
    `F.cross_entropy(..., label_smoothing=eps)` trains towards: the one-hot vector scaled by 1 - eps, plus eps
    spread evenly over all K classes.
    """,
    starter="""
    from minivit.exercises.ch4 import ex3


    def my_smooth_targets(labels, num_classes, eps):
        raise NotImplementedError  # your code here


    ex3.check(my_smooth_targets)
    # ex3.hint()
    # ex3.solution()
    """,
    answer_name="my_smooth_targets",
    solution_code="""
import torch.nn.functional as F


def my_smooth_targets(labels, num_classes, eps):
    return (1 - eps) * F.one_hot(labels, num_classes).float() + eps / num_classes
""",
    hints=("Each row must still sum to 1. How much does the true class get in total?",
           "(1 - eps) * one_hot + eps / K: the true class gets 1 - eps + eps / K, every other class eps / K."),
    checker=_check_smoothing, anchor="## 5. The shipped model",
    recognised=("eps / (K - 1) recipe", "rows do not sum to 1", "true class keeps 1"),
)

ex4 = Exercise(
    name="ex4", title="mirror images and upside-down images", kind="experiment",
    prompt="""
    Run the cell: it measures the shipped ViT's accuracy on CIFAR-10 test images (the offline copy is a JPEG
    q75 re-encoding of CIFAR-10), on the same images mirrored left-right, and upside down. Which explanation
    fits the numbers?

    - **A** Both flips cost about the same: any change of the image confuses the model.
    - **B** Mirroring costs almost nothing, turning upside down costs a lot: training used random horizontal
      flips, and photographs are not symmetric top to bottom.
    - **C** Neither costs anything: a ViT is invariant to flips by construction.
    - **D** Mirroring costs a lot, turning upside down costs nothing.
    """,
    starter="""
    import torch

    import minivit
    import minivit.data.augment
    import minivit.train
    from minivit.exercises.ch4 import ex4


    def measure_flips():
        model, info = minivit.train.load_pretrained_cifar_vit()
        model.eval()
        test = minivit.data.load_cifar10("test", limit=minivit.by_profile(smoke=200, cpu=2000, gpu=10000))
        images = minivit.data.augment.normalize(test.images, info["mean"], info["std"])
        with torch.no_grad():
            for what, x in [("original", images), ("mirrored", images.flip(-1)), ("upside down", images.flip(-2))]:
                accuracy = (model(x).argmax(1) == test.labels).float().mean().item()
                print(f"{what:12s} {accuracy:.1%} on {len(test)} test images")
        print("data:", test.source)


    measure_flips()

    answer = ...  # 'A', 'B', 'C' or 'D'
    ex4.check(answer)
    # ex4.hint()
    # ex4.solution()
    """,
    answer_name="answer",
    solution_code="answer = 'B'  # e.g. 75% / 74% / 37%: mirrored images were part of training, upside-down ones not\n",
    hints=("Compare the two flipped accuracies with the original one separately: which flip did the "
           "augmentation of section 2 use?",
           "The training images were mirrored at random, so a mirrored test image looks like training data; "
           "nothing ever showed the model a sky at the bottom."),
    checker=letter_checker("B", {
        "A": "the printed accuracies differ a lot between the two flips: look again",
        "C": "a ViT knows where each patch is through its position embeddings, so a flip changes its input; "
             "and one of the printed accuracies drops",
        "D": "it is the other way round in the printed numbers",
    }),
    anchor="## 6. The CNN",
    recognised=("A: both flips equal", "C: invariant by construction", "D: reversed"),
)

EXERCISES = [ex1, ex2, ex3, ex4]
