"""The exercises: every reference solution passes its checker, typical wrong answers fail with their message,
unattempted and crashing answers are reported in one line, hints escalate, and the insertion script works."""
from __future__ import annotations

import ast
import copy
import importlib.util
import io
import json
import math
import shutil
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minivit.exercises import CHAPTERS, chapter
from minivit.exercises.base import CORRECT, CRASHED, NOT_ATTEMPTED, WRONG

ROOT = Path(__file__).resolve().parent.parent
ALL = [(n, ex) for n in CHAPTERS for ex in chapter(n).EXERCISES]
IDS = [f"ch{n}-{ex.name}" for n, ex in ALL]


def _exercise(number: int, name: str):
    return next(ex for ex in chapter(number).EXERCISES if ex.name == name)


# --------------------------------------------------------------------------- typical wrong answers per exercise

def _conv1d(flip=False, stride_on=True, pad_both=True, pad=True):
    def conv1d(signal, kernel, stride, padding):
        kernel = kernel[::-1] if flip else kernel
        stride = stride if stride_on else 1
        padding = padding if pad else 0
        padded = [0.0] * padding + list(signal) + ([0.0] * padding if pad_both else [])
        n = (len(padded) - len(kernel)) // stride + 1
        return [sum(padded[i * stride + k] * kernel[k] for k in range(len(kernel))) for i in range(n)]
    return conv1d


def _conv2d(flip=False, transpose=False, reshape=True):
    def conv(images, weight):
        weight = weight.flip(-1, -2) if flip else weight
        b, _, h, w = images.shape
        c, _, kh, kw = weight.shape
        out = weight.reshape(c, -1) @ F.unfold(images, (kh, kw))
        if not reshape:
            return out
        out = out.reshape(b, c, h - kh + 1, w - kw + 1)
        return out.transpose(-1, -2) if transpose else out
    return conv


def _receptive(mode):
    def rf(layers):
        field, jump, fields = 1, 1, []
        for k, s in layers:
            if mode == "early":
                jump *= s
            field += (k - 1) * (1 if mode == "nostride" else jump)
            if mode != "early":
                jump *= s
            fields.append(field)
        return fields[-1] if mode == "last" else fields
    return rf


def _attention(scale="sqrt", dim=-1, weights=False):
    def attention(q, k, v):
        d = q.shape[-1]
        s = q @ k.transpose(-2, -1) / {"sqrt": math.sqrt(d), "none": 1.0, "d": d}[scale]
        a = s.softmax(dim=dim)
        return a if weights else a @ v
    return attention


def _padded(mode):
    from minivit.attention import scaled_dot_product_attention as sdpa

    def fn(q, k, v, pad):
        mask = {"query": ~pad[:, :, None], "inverted": pad[:, None, :], "none": None}[mode]
        return sdpa(q, k, v, attn_mask=mask)[0]
    return fn


def _sinusoidal(mode):
    def fn(p, dim):
        pos = torch.arange(p, dtype=torch.float32)[:, None]
        exponent = torch.arange(dim // 2) / dim if mode == "slow" else torch.arange(0, dim, 2) / dim
        angles = pos * 10000.0 ** (-exponent.float())
        if mode == "concat":
            return torch.cat([angles.sin(), angles.cos()], 1)
        out = torch.empty(p, dim)
        first, second = (angles.cos(), angles.sin()) if mode == "swap" else (angles.sin(), angles.cos())
        out[:, 0::2], out[:, 1::2] = first, second
        return out
    return fn


def _patchify(mode):
    def fn(images, p):
        if mode == "unfold":
            return F.unfold(images, p, stride=p).transpose(1, 2)
        b, c, h, w = images.shape
        x = images.reshape(b, c, h // p, p, w // p, p).permute(0, 4, 2, 3, 5, 1)  # columns first
        return x.reshape(b, (h // p) * (w // p), p * p * c)
    return fn


def _sincos(mode):
    from minivit.transformer import sinusoidal_position_encoding as pe

    def fn(gh, gw, dim):
        if mode == "flat":
            return pe(gh * gw, dim)
        r, c = pe(gh, dim // 2), pe(gw, dim // 2)
        if mode == "swap":
            r, c = c, r
            return torch.cat([r[None, :, :].expand(gh, gw, -1), c[:, None, :].expand(gh, gw, -1)], -1).reshape(-1, dim)
        return torch.cat([r[None, :, :].expand(gw, gh, -1), c[:, None, :].expand(gw, gh, -1)], -1).reshape(-1, dim)
    return fn


def _drop(mode):
    def fn(model, images, labels):
        with torch.no_grad():
            before = (model(images).argmax(1) == labels).float().mean().item()
            saved = model.pos_embed.detach().clone()
            model.pos_embed.zero_()
            after = (model(images).argmax(1) == labels).float().mean().item()
            if mode != "mutate":
                model.pos_embed.copy_(saved)
        return {"fraction": before - after, "sign": 100 * (after - before), "mutate": 100 * (before - after)}[mode]
    return fn


def _vit_params(mode):
    ref = _exercise(3, "ex5").reference()

    def fn(config):
        d, m = config.dim, config.mlp_dim
        norms = (2 * 2 * d) * config.depth + 2 * d
        tokens = (config.image_size // config.patch_size) ** 2 + (config.pool == "cls")
        if mode == "no_norms":
            return ref(config) - norms
        if mode == "no_tokens":
            return ref(config) - (d if config.pool == "cls" else 0) - (tokens * d if config.pos_embed == "learned"
                                                                       else 0)
        if mode == "head":
            return ref(config) - (d * config.num_classes + config.num_classes)
        return ref(config) - m
    return fn


def _lr(mode):
    def fn(step, total, warmup, base):
        if step < warmup:
            return {"zero": base * step / warmup, "plus1": base * (step + 1) / warmup}.get(
                mode, base * (1 / warmup + (1 - 1 / warmup) * step / warmup))
        start, length = (0, total) if mode == "cos_all" else (warmup, total - warmup)
        return base * 0.5 * (1 + math.cos(math.pi * (step - start) / length))
    return fn


def _split(mode):
    def fn(model):
        names = [n for n, _ in model.named_parameters()]
        if mode == "all":
            return names, []
        if mode == "biases":
            decay = [n for n, p in model.named_parameters() if p.ndim >= 2 or n.endswith("bias")]
            decay = [n for n in decay if n not in ("cls_token", "pos_embed")]
            return decay, [n for n in names if n not in decay]
        decay = [n for n, p in model.named_parameters() if p.ndim >= 2 and n not in ("cls_token", "pos_embed")]
        return [n for n in names if n not in decay], decay  # swapped
    return fn


def _smooth(mode):
    def fn(labels, k, eps):
        onehot = F.one_hot(labels, k).float()
        if mode == "k_minus_1":
            return (1 - eps) * onehot + eps / (k - 1) * (1 - onehot)
        if mode == "no_share":
            return (1 - eps) * onehot + eps / k * (1 - onehot)
        return onehot + eps / k
    return fn


def _xyxy(mode):
    def fn(b):
        cx, cy, w, h = b.unbind(-1)
        if mode == "full":
            return torch.stack([cx - w, cy - h, cx + w, cy + h], -1)
        if mode == "order":
            return torch.stack([cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2], -1)
        return torch.stack([cx - w / 2, cy - h / 2, w, h], -1)
    return fn


def _pixels(mode):
    from minivit.boxes import box_cxcywh_to_xyxy

    def fn(boxes, size):
        h, w = size
        if mode == "swap":
            h, w = w, h
        b = boxes if mode == "cxcywh" else box_cxcywh_to_xyxy(boxes)
        return b * torch.tensor([w, h, w, h])
    return fn


def _pmask(mode):
    def fn(sizes, height, width):
        m = torch.ones(len(sizes), height, width, dtype=torch.bool)
        for i, (h, w) in enumerate(sizes):
            if mode == "swap":
                m[i, :w, :h] = False
            elif mode == "corner":
                m[i, height - h:, width - w:] = False
            else:
                m[i, :h, :w] = False
        return ~m if mode == "inverted" else m
    return fn


def _giou(mode):
    from minivit.boxes import box_iou

    def fn(b1, b2):
        iou, union = box_iou(b1, b2)
        if mode == "iou":
            return iou
        x, y = b1[:, None], b2[None]
        sides = torch.max(x[..., 2:], y[..., 2:]) - torch.min(x[..., :2], y[..., :2])
        c = sides[..., 0] * sides[..., 1]
        return iou - (c - union) / union
    return fn


def _cost(mode):
    from minivit.boxes import box_cxcywh_to_xyxy as xyxy
    from minivit.boxes import generalized_box_iou as giou

    def fn(logits, boxes, labels, tboxes):
        p = logits.softmax(-1)[:, labels]
        cls = p if mode == "plus" else -p
        g = -giou(xyxy(boxes), xyxy(tboxes))
        l1 = torch.cdist(xyxy(boxes), xyxy(tboxes), p=1) if mode == "xyxy" else torch.cdist(boxes, tboxes, p=1)
        w = (1, 1, 1) if mode == "noweights" else (1, 5, 2)
        return w[0] * cls + w[1] * l1 + w[2] * g
    return fn


def _reduce(mode):
    def fn(cost):
        if mode == "rows":
            return cost - cost.min(1, keepdims=True)
        r = cost - cost.min(0, keepdims=True)
        return r - r.min(1, keepdims=True)
    return fn


def _targets(mode):
    def fn(q, qi, ti, labels, k):
        t = torch.full((q,), 0 if mode == "zero" else k, dtype=torch.int64)
        t[qi] = labels[: len(qi)] if mode == "order" else labels[ti]
        return t
    return fn


def _cls_map(mode):
    def fn(att, grid):
        if mode == "column":
            return att[..., 1:, 0].reshape(att.shape[0], *grid)
        return att[..., 0, 1:].reshape(att.shape[0], grid[1], grid[0]).transpose(-1, -2)
    return fn


def _rollout(mode):
    from minivit.viz.maps import attention_rollout

    def fn(att):
        if mode == "noresidual":
            return attention_rollout(att, residual=False)
        return attention_rollout(att.flip(0))
    return fn


def _distance(mode):
    from minivit.viz.maps import patch_distance_matrix

    def fn(att, grid, patch):
        a = att[1:, 1:]
        if mode != "unnormalized":
            a = a / a.sum(-1, keepdim=True)
        d = patch_distance_matrix(grid, 1 if mode == "patches" else patch)
        per_query = (a * d).sum(-1)
        return (per_query.sum() if mode == "sum" else per_query.mean()).item()
    return fn


def _relbias(mode):
    def fn(table, m):
        pos = torch.arange(m * m)
        dy, dx = pos[:, None] // m - pos[None, :] // m, pos[:, None] % m - pos[None, :] % m
        if mode == "reversed":
            dy, dx = -dy, -dx
        if mode == "swap":
            dy, dx = dx, dy
        out = table[(dy + m - 1) * (2 * m - 1) + (dx + m - 1)]  # (M*M, M*M, heads)
        return out if mode == "last" else out.permute(2, 0, 1)
    return fn


def _cutmix(mode):
    def fn(images, labels, box, perm, k):
        t, left, b, r = box
        if mode == "rowscols":
            t, left, b, r = left, t, r, b
        mixed = images[perm].clone() if mode == "reverse" else images if mode == "inplace" else images.clone()
        source = images if mode == "reverse" else images[perm]
        mixed[..., t:b, left:r] = source[..., t:b, left:r]
        lam = 1 - (b - t) * (r - left) / (images.shape[-2] * images.shape[-1])
        lam = 1 - lam if mode == "weights" else lam
        one_hot = F.one_hot(labels, k).float()
        return mixed, one_hot if mode == "onehot" else lam * one_hot + (1 - lam) * one_hot[perm]
    return fn


def _distill(mode):
    def fn(cls, dist, targets, teacher):
        hard = teacher.argmax(-1)
        if mode == "soft":
            return 0.5 * F.cross_entropy(cls, targets) + 0.5 * F.cross_entropy(dist, teacher.softmax(-1))
        if mode == "swapped":
            return 0.5 * F.cross_entropy(dist, targets) + 0.5 * F.cross_entropy(cls, hard)
        return F.cross_entropy(cls, targets) + F.cross_entropy(dist, hard)
    return fn


def _resample(mode):
    def fn(table, old, new, prefix):
        patches, dim = table[:, prefix:], table.shape[-1]
        if mode == "transposed":
            image = patches.reshape(1, old[1], old[0], dim).permute(0, 3, 2, 1)
        else:
            image = patches.reshape(1, *old, dim).permute(0, 3, 1, 2)
        image = F.interpolate(image, size=tuple(new), mode="bilinear" if mode == "bilinear" else "bicubic",
                              align_corners=mode == "align")
        image = image.permute(0, 3, 2, 1) if mode == "transposed" else image.permute(0, 2, 3, 1)
        rows = image.reshape(1, -1, dim)
        return rows if mode == "noprefix" else torch.cat([table[:, :prefix], rows], dim=1)
    return fn


def _infonce(mode):
    def fn(img, txt, scale):
        if mode != "raw":
            img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        logits = (scale if mode == "noexp" else scale.exp()) * img @ txt.T
        targets = torch.arange(len(logits))
        one, other = F.cross_entropy(logits, targets), F.cross_entropy(logits.T, targets)
        return {"one": one, "sum": one + other}.get(mode, (one + other) / 2)
    return fn


def _zero_shot(mode):
    def fn(img, prompts):
        if mode == "best":
            return (img[:, None, None, :] * prompts[None]).sum(-1).amax(-1)
        mean = prompts.mean(1)
        logits = img @ mean.T if mode == "unnormalized" else img @ F.normalize(mean, dim=-1).T
        return logits.T if mode == "transposed" else logits
    return fn


MISTAKES = {
    (1, "ex1"): [(_conv1d(flip=True), "kernel is flipped"), (_conv1d(stride_on=False), "stride is ignored"),
                 (_conv1d(pad_both=False), "padding only on the left"), (_conv1d(pad=False), "padding is missing")],
    (1, "ex2"): [(_conv2d(flip=True), "kernel is flipped"), (_conv2d(transpose=True), "height and width are swapped"),
                 (_conv2d(reshape=False), "one column per window")],
    (1, "ex3"): [(lambda n, k, s, p: (n + 2 * p - k) // s, "forget the + 1"),
                 (lambda n, k, s, p: (n - k) // s + 1, "forget the padding"),
                 (lambda n, k, s, p: (n + p - k) // s + 1, "both sides"),
                 (lambda n, k, s, p: -(-(n + 2 * p - k) // s) + 1, "rounded up"),
                 (lambda n, k, s, p: (n + 2 * p - k) / s + 1, "floor division")],
    (1, "ex4"): [(_receptive("nostride"), "strides are ignored"), (_receptive("early"), "own stride"),
                 (_receptive("last"), "a list")],
    (1, "ex5"): [("A", "not empty"), ("C", "weight sharing"), ("d", "rows")],
    (2, "ex1"): [(_attention(scale="none"), "missing the 1/sqrt(d) scale"), (_attention(scale="d"), "instead of sqrt"),
                 (_attention(dim=-2), "query axis"), (_attention(weights=True), "returned the attention weights")],
    (2, "ex2"): [(lambda n: torch.ones(n, n, dtype=torch.bool).triu(), "transposed"),
                 (lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1), "keep the diagonal"),
                 (lambda n: ~torch.ones(n, n, dtype=torch.bool).tril(), "swapped"),
                 (lambda n: torch.zeros(n, n).masked_fill(torch.ones(n, n).triu(1).bool(), -math.inf), "boolean")],
    (2, "ex3"): [(_padded("query"), "query axis"), (_padded("inverted"), "only to the padding"),
                 (_padded("none"), "not masked")],
    (2, "ex4"): [(4 * 96 * 96, "biases"), (3 * 96 * 96 + 3 * 96, "output projection"),
                 (4 * (4 * 96 * 96 + 4 * 96), "do not multiply")],
    (2, "ex5"): [("A", "(N, N) weights dominate"), ("C", "not three"), ("D", "far from 1")],
    (2, "ex6"): [(_sinusoidal("swap"), "sin and cos are swapped"), (_sinusoidal("concat"), "interleaved"),
                 (_sinusoidal("slow"), "exponent is 2i/dim")],
    (3, "ex1"): [(_patchify("unfold"), "channels first"), (_patchify("columns"), "column by column")],
    (3, "ex2"): [(196, "class token"), (14, "one side"), (257, "224 / 16 = 14")],
    (3, "ex3"): [(_sincos("swap"), "halves are swapped"), (_sincos("columns"), "column by column"),
                 (_sincos("flat"), "flattened index")],
    (3, "ex4"): [(_drop("fraction"), "percentage points"), (_drop("sign"), "sign is reversed"),
                 (_drop("mutate"), "pos_embed changed")],
    (3, "ex5"): [(_vit_params("no_norms"), "LayerNorms have parameters"),
                 (_vit_params("no_tokens"), "class token and/or the learned position"),
                 (_vit_params("head"), "classification head"), (_vit_params("other"), "not right")],
    (4, "ex1"): [(_lr("zero"), "warmup starts at 0"), (_lr("plus1"), "(step + 1)"),
                 (_lr("cos_all"), "all total_steps")],
    (4, "ex2"): [(_split("all"), "every parameter decays"), (_split("biases"), "biases decay"),
                 (_split("swapped"), "swapped")],
    (4, "ex3"): [(_smooth("k_minus_1"), "eps / (K - 1)"), (_smooth("no_share"), "do not sum to 1"),
                 (_smooth("keep1"), "keeps 1")],
    (4, "ex4"): [("A", "differ a lot"), ("C", "position embeddings"), ("D", "other way round")],
    (5, "ex1"): [((2, 100, 91), "no object"), ((100, 2, 92), "sequence-first"), ((2, 100, 4), "pred_boxes"),
                 ("2x100x92", "tuple of sizes")],
    (5, "ex2"): [(_xyxy("full"), "twice too large"), (_xyxy("order"), "(x1, x2, y1, y2)"),
                 (_xyxy("xywh"), "(x1, y1, w, h)")],
    (5, "ex3"): [(_pixels("swap"), "scaled by the height"), (_pixels("cxcywh"), "still (cx, cy, w, h)")],
    (5, "ex4"): [(_pmask("inverted"), "True and False are swapped"), (_pmask("corner"), "bottom right"),
                 (_pmask("swap"), "height and width are swapped")],
    (5, "ex5"): [("B", "float rounding"), ("C", "shift the positions"), ("D", "other way round")],
    (6, "ex1"): [(_giou("iou"), "plain IoU"), (_giou("union"), "divided by the union")],
    (6, "ex2"): [(_cost("plus"), "class term has the wrong sign"), (_cost("xyxy"), "xyxy corners"),
                 (_cost("noweights"), "weights are missing")],
    (6, "ex3"): [(_reduce("rows"), "only the rows"), (_reduce("cols"), "columns first")],
    (6, "ex4"): [(_targets("zero"), "no object"), (_targets("order"), "labels[target_index]")],
    (6, "ex5"): [("B", "stricter threshold"), ("C", "numbers differ"), ("D", "shrinks")],
    (7, "ex1"): [(_cls_map("column"), "attends to the class token"), (_cls_map("grid"), "column by column")],
    (7, "ex2"): [(_rollout("noresidual"), "residual connection is missing"), (_rollout("order"), "wrong order")],
    (7, "ex3"): [(_distance("patches"), "in patches"), (_distance("unnormalized"), "not renormalized"),
                 (_distance("sum"), "summed over the query")],
    (7, "ex4"): [("B", "none is under 5 px"), ("C", "not smaller"), ("D", "above 10 px")],
    (8, "ex1"): [((2, 64, 49, 96), "one batch dimension"), ((128, 7, 7, 96), "flattened to M*M"),
                 ((16, 49, 96), "8 x 8 of them"), ((2, 3136, 96), "before the cut"), ("128x49x96", "tuple of sizes")],
    (8, "ex2"): [(_relbias("reversed"), "other way round"), (_relbias("swap"), "dy and dx are swapped"),
                 (_relbias("last"), "heads must come first")],
    (8, "ex3"): [("B", "none is near 80%"), ("C", "under 50%"), ("D", "above 20%")],
    (8, "ex4"): [(_cutmix("reverse"), "wrong way round"), (_cutmix("rowscols"), "rows and columns are swapped"),
                 (_cutmix("weights"), "label weights are swapped"), (_cutmix("onehot"), "one-hot"),
                 (_cutmix("inplace"), "changed the input images")],
    (8, "ex5"): [(_distill("soft"), "argmax (a hard label)"), (_distill("swapped"), "heads are swapped"),
                 (_distill("sum"), "summed")],
    (9, "ex1"): [((1, 576, 768), "class token's row is kept"), ((1, 197, 768), "table at 224 px"),
                 ((1, 25, 768), "24 x 24"), ((1, 730, 768), "patches stay 16 px")],
    (9, "ex2"): [(_resample("align"), "align_corners=True"), (_resample("bilinear"), "bilinearly"),
                 (_resample("transposed"), "column by column"), (_resample("noprefix"), "wrong shape")],
    (9, "ex3"): [("B", "far above it"), ("C", "far larger than 2 points"), ("D", "within a few points")],
    (9, "ex4"): [(_infonce("one"), "only the image-to-text direction"), (_infonce("sum"), "summed"),
                 (_infonce("raw"), "unit length"), (_infonce("noexp"), "logarithm")],
    (9, "ex5"): [(_zero_shot("unnormalized"), "renormalize"), (_zero_shot("best"), "best prompt"),
                 (_zero_shot("transposed"), "(N, K)")],
}


def test_counts():
    counts = {n: len(chapter(n).EXERCISES) for n in CHAPTERS}
    assert all(4 <= c <= 6 for c in counts.values()), counts
    assert sum(counts.values()) >= 30
    assert set(MISTAKES) == {(n, ex.name) for n, ex in ALL}, "every exercise needs its wrong answers tested"


@pytest.mark.parametrize(("number", "exercise"), ALL, ids=IDS)
def test_reference_passes_and_wrong_answers_fail(number, exercise):
    result = exercise.evaluate(exercise.reference())
    assert result.status == CORRECT, result.message
    wrong = MISTAKES[(number, exercise.name)]
    assert len(wrong) >= 2
    for answer, expected in wrong:
        result = exercise.evaluate(answer)
        assert result.status == WRONG, (expected, result.message)
        assert expected in result.message, (expected, result.message)
        assert len(result.message.splitlines()) <= 2
        assert f"{exercise.name}.hint()" in result.message


@pytest.mark.parametrize(("number", "exercise"), ALL, ids=IDS)
def test_unattempted_and_crashing(number, exercise, capsys):
    for answer in (..., None):
        exercise.check(answer)
        assert "not attempted yet" in capsys.readouterr().out
    if exercise.answer_name != "answer":  # a function
        def todo(*args):
            raise NotImplementedError

        assert exercise.evaluate(todo).status == NOT_ATTEMPTED

        def broken(*args):
            return [][1]

        result = exercise.evaluate(broken)
        assert result.status == CRASHED and "IndexError" in result.message
        assert len(result.message.splitlines()) == 1


def test_hint_escalates_and_solution_prints(capsys):
    exercise = copy.deepcopy(_exercise(2, "ex1"))
    exercise.hint()
    first = capsys.readouterr().out
    exercise.hint()
    second = capsys.readouterr().out
    assert first.startswith("Hint") and second.startswith("Stronger hint") and first != second
    exercise.hint()
    assert capsys.readouterr().out == second  # stays at the strongest
    exercise.hint(1)
    assert capsys.readouterr().out == first
    exercise.hint(3)
    assert "hints 1 to 2" in capsys.readouterr().out
    exercise.solution()
    assert f"def {exercise.answer_name}(" in capsys.readouterr().out


def test_every_exercise_has_two_hints_and_a_solution():
    for _, exercise in ALL:
        assert len(exercise.hints) == 2 and all(exercise.hints) and exercise.hints[0] != exercise.hints[1]
        assert exercise.solution_code.strip() and exercise.prompt.strip() and exercise.recognised


def test_a_checker_that_gets_a_wrong_type_says_so():
    assert "function" in _exercise(1, "ex2").evaluate(42).message
    assert "one letter" in _exercise(1, "ex5").evaluate(3).message
    assert "number" in _exercise(2, "ex4").evaluate("many").message


# --------------------------------------------------------------------------- the insertion script

def _load_script():
    spec = importlib.util.spec_from_file_location("insert_exercises", ROOT / ".ci" / "insert_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def inserted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebooks")
    for number in CHAPTERS:
        shutil.copy(ROOT / "notebooks" / chapter(number).NOTEBOOK, folder)
    script = _load_script()
    assert script.main(["--notebooks", str(folder)]) == 0
    return folder, script


def test_insertion_adds_the_cells_once(inserted):
    folder, script = inserted
    for number in CHAPTERS:
        module = chapter(number)
        original = json.loads((ROOT / "notebooks" / module.NOTEBOOK).read_text())
        original["cells"] = [c for c in original["cells"] if not script.is_exercise_cell(c)]  # as before insertion
        first = (folder / module.NOTEBOOK).read_text()
        cells = json.loads(first)["cells"]
        tagged = [c for c in cells if script.is_exercise_cell(c)]
        assert len(tagged) == 2 * len(module.EXERCISES)
        assert len(cells) == len(original["cells"]) + len(tagged)
        for exercise in module.EXERCISES:  # each exercise right where its anchor says
            at = next(i for i, c in enumerate(cells) if c.get("id") == f"ex-ch{number}-{exercise.name}-0")
            following = "".join(cells[at + 2]["source"]) if at + 2 < len(cells) else ""
            later = [c for c in cells[at + 2:] if not script.is_exercise_cell(c)]
            assert exercise.position != "before" or "".join(later[0]["source"]).lstrip().startswith(exercise.anchor) \
                or exercise.anchor in following
        again = script.insert_chapter(json.loads(first), number)
        assert again == json.loads(first)  # idempotent


def test_insertion_fails_loudly_on_a_missing_anchor(inserted):
    folder, script = inserted
    notebook = json.loads((folder / chapter(1).NOTEBOOK).read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            cell["source"] = ["".join(cell["source"]).replace("## 3. Padding", "## 3. Zero padding")]
    with pytest.raises(script.AnchorError, match="'## 3. Padding'"):
        script.insert_chapter(notebook, 1)


def test_inserted_starters_run_unsolved(inserted, capsys, monkeypatch):
    monkeypatch.setenv("MINIVIT_PROFILE", "smoke")
    folder, script = inserted
    for number in CHAPTERS:
        cells = json.loads((folder / chapter(number).NOTEBOOK).read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] == "code" and script.is_exercise_cell(cell):
                source = "".join(cell["source"])
                if "load_" in source:  # experiment cells with models and data: nbval runs them (see README)
                    continue
                exec(compile(source, "<starter>", "exec"), {})
                assert "not attempted yet" in capsys.readouterr().out


QUICK_EXPERIMENTS = [(n, ex) for n, ex in ALL if n in (8, 9) and ex.kind == "experiment"]


@pytest.mark.parametrize(("number", "exercise"), QUICK_EXPERIMENTS,
                         ids=[f"ch{n}-{ex.name}" for n, ex in QUICK_EXPERIMENTS])
def test_quick_experiments_run_under_smoke_and_their_answer_follows(number, exercise, capsys, monkeypatch):
    """Chapters 8 and 9's experiments take about a second under smoke: the starter prints its numbers, and
    the reference letter passes on them."""
    monkeypatch.setenv("MINIVIT_PROFILE", "smoke")
    source = textwrap.dedent(exercise.starter).replace("answer = ...", exercise.solution_code.strip())
    exec(compile(source, f"<ch{number} {exercise.name}>", "exec"), {})
    out = capsys.readouterr().out
    assert f"{exercise.name}: correct!" in out, out
    assert "images of" in out  # the data copy is named beside the numbers


def test_inserted_notebooks_lint(inserted):
    folder, _ = inserted
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed beside this Python")
    result = subprocess.run([str(ruff), "check", "--config", str(ROOT / "pyproject.toml"), "--config",
                             "lint.isort.known-first-party=['minivit']", str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_solution_notebooks_match_the_exercises():
    for number in CHAPTERS:
        path = ROOT / "notebooks" / "solutions" / f"ch{number}_solutions.ipynb"
        notebook = json.loads(path.read_text())
        text = "\n".join("".join(c["source"]) for c in notebook["cells"])
        outputs = "\n".join("".join(o.get("text", "")) for c in notebook["cells"] if c["cell_type"] == "code"
                            for o in c.get("outputs", []))
        for exercise in chapter(number).EXERCISES:
            assert f"{exercise.name}.check(" in text
            assert f"{exercise.name}: correct!" in outputs, (path.name, exercise.name)
        assert not any(o.get("output_type") == "error" for c in notebook["cells"] for o in c.get("outputs", []))


def _bound_names(code: str) -> set[str]:
    """Names a cell binds at the top level, imports aside (an import rebinds the same object)."""
    tree = ast.parse(code)
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            for target in ast.walk(node):
                if isinstance(target, ast.Name) and isinstance(target.ctx, ast.Store):
                    names.add(target.id)
    return names


def _notebook_names(path: Path) -> set[str]:
    names = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "code" and "exercise" not in cell.get("metadata", {}).get("tags", []):
            source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                               if not line.lstrip().startswith(("%", "!")))
            names |= {t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
                      if t.type == tokenize.NAME}
    return names


@pytest.mark.parametrize("number", CHAPTERS)
def test_starters_do_not_clobber_the_notebooks_names(number):
    """A starter cell must not rebind a name its chapter uses (e.g. `receptive_field`, `causal_mask`)."""
    used = _notebook_names(ROOT / "notebooks" / chapter(number).NOTEBOOK)
    for exercise in chapter(number).EXERCISES:
        bound = _bound_names(textwrap.dedent(exercise.starter)) - {"answer"}
        assert not bound & used, (exercise.name, sorted(bound & used))
        assert all(name.startswith(("my_", "measure_", "shipped_", "cifar_")) for name in bound), sorted(bound)


def test_reference_solutions_are_self_contained():
    for _, exercise in ALL:
        namespace: dict = {}
        exec(textwrap.dedent(exercise.solution_code), namespace)
        assert exercise.answer_name in namespace


def test_numpy_answers_are_accepted():
    reduce_cost = _exercise(6, "ex3").reference()
    assert _exercise(6, "ex3").evaluate(lambda cost: np.asarray(reduce_cost(cost)).tolist()).status == CORRECT
