"""``python -m minivit.evaluate``: a classifier checkpoint's CIFAR-10 test accuracy, re-measured.

    python -m minivit.evaluate                       # the small ViT shipped with minivit
    python -m minivit.evaluate analysis --views 1    # the analysis ViT shipped with minivit (chapter 7)
    python -m minivit.evaluate runs/cpu/last.pt --views 1

Loads the checkpoint (validated before anything is built), scores the full CIFAR-10 test split
(or ``--limit`` images) with the checkpoint's own normalization, and prints the accuracy beside
the one the checkpoint records. No test is involved: this is how a reader checks a figure in
the README or a chapter for themselves.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from minivit.devices import choose_precision, get_device, to_device
from minivit.train.checkpoint import SHIPPED_CIFAR_VITS, load_checkpoint
from minivit.train.evaluate import evaluate

VIEWS = {1: (False, 0), 2: (True, 0), 10: (True, 1)}  # views -> (tta_flip, tta_shift)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minivit.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=None,
                        help="a classifier checkpoint's path, or the name of a ViT shipped with minivit: "
                             f"{' or '.join(SHIPPED_CIFAR_VITS)} (default: small)")
    parser.add_argument("--views", type=int, choices=sorted(VIEWS), default=None,
                        help="test-time views per image: 1, 2 (with the mirror image) or 10 (mirror x 5 one-pixel "
                             "shifts); default: the views the checkpoint's run tested with")
    parser.add_argument("--limit", type=int, default=None,
                        help="score a class-balanced subset of this many test images (default: all 10,000)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best one found)")
    return parser


def views_of(info: dict) -> int:
    """The number of test views the checkpoint's run used (1 when it records none)."""
    recipe = info.get("train_config", {})
    flip, shift = bool(recipe.get("tta_flip", False)), int(recipe.get("tta_shift", 0) or 0)
    return 10 if flip and shift else 2 if flip else 1


def checkpoint_path(argument: str | None) -> Path:
    """The file a ``checkpoint`` argument names: a shipped ViT's name (unless a file of that name exists) or a path."""
    if argument is None:
        return SHIPPED_CIFAR_VITS["small"]
    if argument in SHIPPED_CIFAR_VITS and not Path(argument).exists():
        return SHIPPED_CIFAR_VITS[argument]
    return Path(argument)


def main(argv: list[str] | None = None) -> float:
    """Parse the arguments, load and score; returns the accuracy."""
    from minivit.data import load_cifar10

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"argument --limit: must be an integer >= 1, got {args.limit}")
    path = checkpoint_path(args.checkpoint)
    device = get_device(args.device)
    try:
        model, info = load_checkpoint(path)
        if info["architecture"] not in ("vit", "small_cnn"):
            raise ValueError(f"{path} holds a {info['architecture']} model, not a CIFAR-10 classifier")
        mean, std = info["mean"], info["std"]
    except (FileNotFoundError, ValueError, KeyError) as error:
        parser.error(f"argument checkpoint: {error.args[0] if isinstance(error, KeyError) else error}")
    views = args.views or views_of(info)
    test_set = load_cifar10("test", limit=args.limit)
    flip, shift = VIEWS[views]
    dtype = choose_precision(device, "auto").dtype
    _, accuracy = evaluate(to_device(model, device), test_set, mean, std, tta_flip=flip, tta_shift=shift,
                           amp_dtype=dtype, device=device)
    shown = f"the shipped {path.stem}" if path in SHIPPED_CIFAR_VITS.values() else str(path)
    print(f"{shown}: {info['architecture']} {info['config']}")
    print(f"test accuracy {accuracy:.2%} on {len(test_set):,} images, {views} view(s) each, on {device}")
    print(f"data: {test_set.source}")
    if "test_acc" in info:
        print(f"the checkpoint records {info['test_acc']:.2%} (its run's own test, {views_of(info)} view(s))")
    return accuracy


if __name__ == "__main__":
    main()
