"""The DETR paper's ablations at the course's scale: the tiny DETR on the synthetic shapes.

* positional encodings (the paper's Table 3): the spatial positions in all attentions, in the
  decoder's cross-attention only, added once at the input, or nowhere
  (``DETRConfig.position_placement``), each trained with several seeds;
* every decoder layer's own predictions (the auxiliary outputs), with and without NMS (the
  paper's Fig. 4), measured on every trained model.

``python -m minivit.experiments.detr_ablation --steps 2500 --seeds 0 1 2`` trains them one after
another and rewrites the JSON file after each run, so a stopped run keeps what it finished and
a second call skips the runs already there (same placement, seed and recipe).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from minivit.data.shapes import make_shapes
from minivit.detection import evaluate_decoder_layers, evaluate_map, save_tiny_detr, train_detr
from minivit.detr import POSITION_PLACEMENTS, build_tiny_detr
from minivit.matching import SetCriterion
from minivit.runtime import seed_everything

DEFAULT_OUTPUT = Path("docs") / "detr_ablation.json"

#: Table 3 of Carion et al. (2020), COCO val AP of DETR-R50 trained 300 epochs, by where the spatial
#: positional encoding goes (the object queries are learned output positions in every row).
PAPER_TABLE3_AP = {"all": 40.6, "decoder": 39.3, "input": 39.2, "none": 32.8}


def run_one(placement: str, seed: int, steps: int, batch_size: int = 32, lr: float = 5e-4, num_train: int = 4000,
            num_val: int = 500, image_size: int = 64, nms_iou: float = 0.7, train_overrides: dict | None = None,
            model_overrides: dict | None = None, loss_weights: dict | None = None, eval_every: int = 0,
            save_to: str | Path | None = None) -> dict:
    """Train one tiny DETR with the spatial positions at ``placement`` and measure it on held-out images:
    mAP@0.5, mAP@0.75 and the duplicate rate of each decoder layer, without and with NMS at ``nms_iou``.
    ``eval_every``: also record the held-out mAP every so many steps (``curve``; its time is not in
    ``minutes``); ``loss_weights``: :class:`~minivit.matching.SetCriterion` arguments (``eos_coef``,
    ``weight_ce``, ...); ``save_to``: write the model there with :func:`minivit.detection.save_tiny_detr`."""
    train_set = make_shapes(num_train, image_size, seed=1)  # the chapter-6 splits
    val_set = make_shapes(num_val, image_size, seed=2)
    seed_everything(seed)
    model = build_tiny_detr(position_placement=placement, **(model_overrides or {}))
    curve, eval_seconds = [], 0.0

    def evaluate(step, model):
        nonlocal eval_seconds
        started = time.perf_counter()
        curve.append({"step": step, "map50": evaluate_map(model, val_set.images, val_set.targets, 0.5),
                      "map75": evaluate_map(model, val_set.images, val_set.targets, 0.75)})
        print(f"step {step}: held-out mAP@0.5 {curve[-1]['map50']:.3f}, mAP@0.75 {curve[-1]['map75']:.3f}", flush=True)
        model.train()
        eval_seconds += time.perf_counter() - started

    start = time.perf_counter()
    train_detr(model, train_set.images, train_set.targets, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
               progress=False, device="cpu", callback=evaluate if eval_every else None, callback_every=eval_every,
               criterion=SetCriterion(model.num_classes, **loss_weights) if loss_weights else None,
               **(train_overrides or {}))
    minutes = (time.perf_counter() - start - eval_seconds) / 60
    layers = {"no_nms": evaluate_decoder_layers(model, val_set.images, val_set.targets),
              "nms": evaluate_decoder_layers(model, val_set.images, val_set.targets, nms_iou=nms_iou)}
    last = layers["no_nms"][-1]
    metrics = {"map50": round(last["map50"], 4), "map75": round(last["map75"], 4), "steps": steps,
               "train_minutes": round(minutes, 2), "threads": torch.get_num_threads()}
    if save_to is not None:
        save_tiny_detr(model, save_to, None, train_set.classes, image_size, metrics=metrics)
    return {"placement": placement, "seed": seed, "steps": steps, "batch_size": batch_size, "lr": lr,
            "num_train": num_train, "num_val": num_val, "train_overrides": train_overrides or {},
            "model_overrides": model_overrides or {},
            "loss_weights": loss_weights or {}, "nms_iou": nms_iou, "minutes": round(minutes, 2),
            "threads": torch.get_num_threads(), "map50": last["map50"], "map75": last["map75"],
            "duplicate_rate": last["duplicate_rate"], "layers": layers, **({"curve": curve} if curve else {})}


def _same_recipe(run: dict, placement: str, seed: int, settings: dict) -> bool:
    return run["placement"] == placement and run["seed"] == seed and all(run.get(k) == v for k, v in settings.items())


def run_ablation(placements=tuple(POSITION_PLACEMENTS), seeds=(0, 1, 2), steps: int = 2500,
                 output: str | Path = DEFAULT_OUTPUT, **settings) -> dict:
    """Train every placement with every seed (seed-major, so the first seeds complete first) and
    rewrite ``output`` after each run; runs already in ``output`` with the same recipe are kept."""
    output = Path(output)
    results = json.loads(output.read_text()) if output.is_file() else {"paper_table3_ap": PAPER_TABLE3_AP, "runs": []}
    for seed in seeds:
        for placement in placements:
            if any(_same_recipe(run, placement, seed, {"steps": steps, **settings}) for run in results["runs"]):
                continue
            run = run_one(placement, seed, steps, **settings)
            results["runs"].append(run)
            print(f"{placement:>8} seed {seed}: mAP@0.5 {run['map50']:.3f}, mAP@0.75 {run['map75']:.3f}, "
                  f"duplicates {run['duplicate_rate']:.3f}, {run['minutes']:.1f} min", flush=True)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(results, indent=1) + "\n")
    return results


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), 0
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)


def summarize_placements(results: dict, metrics=("map50", "map75", "duplicate_rate")) -> list[dict]:
    """One row per placement (the paper's order): the paper's AP and mean, std and count over seeds of each metric."""
    rows = []
    for placement, paper_ap in results["paper_table3_ap"].items():
        runs = [run for run in results["runs"] if run["placement"] == placement]
        if not runs:
            continue
        row = {"placement": placement, "paper_ap": paper_ap, "seeds": len(runs)}
        for metric in metrics:
            row[metric] = mean_std(run[metric] for run in runs)[:2]
        rows.append(row)
    return rows


def summarize_layers(results: dict, placement: str = "all", metrics=("map50", "map75", "duplicate_rate")) -> list[dict]:
    """One row per decoder layer of the ``placement`` runs: mean and std over seeds, without and with NMS."""
    runs = [run for run in results["runs"] if run["placement"] == placement]
    if not runs:
        raise ValueError(f"no runs with placement {placement!r} in the results")
    rows = []
    for layer in range(len(runs[0]["layers"]["no_nms"])):
        row = {"layer": layer + 1, "seeds": len(runs)}
        for mode in ("no_nms", "nms"):
            for metric in metrics:
                row[f"{metric}_{mode}"] = mean_std(run["layers"][mode][layer][metric] for run in runs)[:2]
        rows.append(row)
    return rows


def load_results(path: str | Path | None = None) -> dict | None:
    """The committed results (``docs/detr_ablation.json`` of the repository checkout minivit is imported
    from), or those at ``path``; None, with a sentence that says why, when there is no such file."""
    from minivit.runtime import _checkout_root

    if path is None:
        root = _checkout_root(__file__.replace("experiments/detr_ablation.py", "__init__.py"))
        if root is None:
            print("The ablation results live in the repository (docs/detr_ablation.json); clone it to see them.")
            return None
        path = root / DEFAULT_OUTPUT
    path = Path(path)
    if not path.is_file():
        print(f"No ablation results at {path.name}; run python -m minivit.experiments.detr_ablation first.")
        return None
    return json.loads(path.read_text())


def _pm(pair, digits: int = 3) -> str:
    mean, std = pair
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_placement_table(results: dict) -> str:
    """The positional-encoding ablation as text: the paper's COCO AP next to the shapes' mean ± std."""
    lines = [f"{'spatial positions':<18}{'paper AP':>9}{'seeds':>7}{'mAP@0.5':>16}{'mAP@0.75':>16}{'duplicates':>16}"]
    for row in summarize_placements(results):
        lines.append(f"{row['placement']:<18}{row['paper_ap']:>9.1f}{row['seeds']:>7}{_pm(row['map50']):>16}"
                     f"{_pm(row['map75']):>16}{_pm(row['duplicate_rate']):>16}")
    return "\n".join(lines)


def format_layer_table(rows: list[dict]) -> str:
    """Per-decoder-layer rows (:func:`summarize_layers`) as text: mAP and duplicates without and with NMS."""
    lines = [f"{'layer':<7}{'mAP@0.5':>16}{'+NMS':>16}{'mAP@0.75':>16}{'+NMS':>16}{'duplicates':>16}{'+NMS':>16}"]
    for row in rows:
        lines.append(f"{row['layer']:<7}" + "".join(f"{_pm(row[f'{metric}_{mode}']):>16}"
                                                   for metric in ("map50", "map75", "duplicate_rate")
                                                   for mode in ("no_nms", "nms")))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--placements", nargs="+", default=list(POSITION_PLACEMENTS), choices=list(POSITION_PLACEMENTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=2500, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_ablation(args.placements, args.seeds, args.steps, args.output, batch_size=args.batch_size, lr=args.lr,
                 num_train=args.num_train)


if __name__ == "__main__":
    main()
