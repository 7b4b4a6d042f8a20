"""Try one training recipe of the tiny DETR and append its result to a JSON log (``docs/detr_experiments.json``).

``python -m minivit.experiments.detr_recipe --steps 6000 --schedule cosine --warmup 300 --name cosine-6k``
trains on the chapter-6 split (4,000 images, seed 1) and measures on its held-out one (500 images,
seed 2): mAP@0.5, mAP@0.75, the duplicate rate, training minutes and threads, with the command.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from minivit.experiments.detr_ablation import run_one

DEFAULT_LOG = Path("docs") / "detr_experiments.json"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="a short label for the log")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--schedule", choices=("step", "cosine"), default="step")
    parser.add_argument("--warmup", type=int, default=0, help="warm-up steps")
    parser.add_argument("--lr-drop", type=float, default=0.75, help="with --schedule step: drop after this fraction")
    parser.add_argument("--num-train", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="{}", help='DETRConfig overrides as JSON, e.g. \'{"num_queries": 12}\'')
    parser.add_argument("--eos-coef", type=float, default=0.1, help='weight of the "no object" class')
    parser.add_argument("--eval-every", type=int, default=0, help="record the held-out mAP every so many steps")
    parser.add_argument("--save", default=None, help="save the trained model to this checkpoint path")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log", default=str(DEFAULT_LOG))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.model)
    if not isinstance(overrides, dict):
        raise SystemExit(f"--model must be a JSON object of DETRConfig fields, got {args.model!r}")
    run = run_one("all", args.seed, args.steps, batch_size=args.batch_size, lr=args.lr, num_train=args.num_train,
                  train_overrides={"schedule": args.schedule, "warmup_steps": args.warmup, "lr_drop": args.lr_drop},
                  model_overrides=overrides, loss_weights={"eos_coef": args.eos_coef}, eval_every=args.eval_every,
                  save_to=args.save)
    run = {"name": args.name, "command": "python -m minivit.experiments.detr_recipe "
           + shlex.join(sys.argv[1:] if argv is None else argv), **run}
    log = Path(args.log)
    runs = json.loads(log.read_text()) if log.is_file() else []
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(json.dumps(runs + [run], indent=1) + "\n")
    print(f"{args.name}: mAP@0.5 {run['map50']:.3f}, mAP@0.75 {run['map75']:.3f}, duplicates "
          f"{run['duplicate_rate']:.3f}, {run['minutes']:.2f} min on {run['threads']} thread(s)")
    return run


if __name__ == "__main__":
    main()
