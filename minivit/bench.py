"""Training throughput of minivit's ViT against torchvision's ``VisionTransformer``.

Both models get the identical configuration, batch, dtype and device; one training step is
forward + cross-entropy + backward + AdamW step. The two models are timed in interleaved
rounds (A B, B A, A B, ...) so that a busy machine slows both alike; warmup steps are not
timed. Example::

    python -m minivit.bench --config vit_cifar_small --batch-size 128 --steps 30 --device cpu
"""
from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from minivit.devices import autocast, get_device, timed
from minivit.runtime import describe
from minivit.vit import CONFIGS, ViTConfig, build_vit

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torchvision_vit(config: ViTConfig | dict) -> nn.Module:
    """torchvision's ``VisionTransformer`` with the same architecture as ``minivit.vit.ViT(config)``."""
    from torchvision.models import VisionTransformer

    config = ViTConfig.resolve(config, {})
    if config.pool != "cls" or config.pos_embed != "learned":
        raise ValueError("torchvision's VisionTransformer has a class token and learned position embeddings only")
    return VisionTransformer(
        image_size=config.image_size, patch_size=config.patch_size, num_layers=config.depth,
        num_heads=config.num_heads, hidden_dim=config.dim, mlp_dim=config.mlp_dim,
        dropout=config.dropout, attention_dropout=config.attn_dropout, num_classes=config.num_classes,
    )


def make_train_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype
) -> Callable[[], None]:
    """One closure that runs a full training step of ``model`` on the fixed batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(images.device.type, enabled=dtype == torch.float16)
    autocast_dtype = None if dtype == torch.float32 else dtype

    def step() -> None:
        with autocast(images.device, autocast_dtype):
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step: Callable[[], None], num_steps: int, device: torch.device) -> float:
    """Seconds for ``num_steps`` training steps."""
    with timed(device) as clock:
        for _ in range(num_steps):
            step()
    return clock.seconds


def benchmark(
    config_name: str = "vit_cifar_small",
    batch_size: int = 128,
    steps: int = 30,
    warmup: int = 3,
    rounds: int = 6,
    device: str | None = None,
    dtype: str = "float32",
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Images per second of both models; ``steps`` timed steps each, split into ``rounds`` interleaved rounds."""
    if config_name not in CONFIGS:
        raise ValueError(f"unknown config {config_name!r}; choose one of {', '.join(CONFIGS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if steps < rounds:
        raise ValueError(f"steps={steps} must be at least rounds={rounds}")
    target = get_device(device)
    torch.manual_seed(seed)
    config = CONFIGS[config_name]
    models = {"minivit ViT": build_vit(config_name), "torchvision VisionTransformer": torchvision_vit(config)}
    images = torch.randn(batch_size, 3, config.image_size, config.image_size, device=target)
    labels = torch.randint(0, config.num_classes, (batch_size,), device=target)
    train_steps = {}
    for name, model in models.items():
        model.to(target).train()
        train_steps[name] = make_train_step(model, images, labels, DTYPES[dtype])
        time_steps(train_steps[name], warmup, target)

    seconds = {name: [] for name in models}
    per_round = [steps // rounds + (i < steps % rounds) for i in range(rounds)]
    for i, num_steps in enumerate(per_round):
        order = list(models) if i % 2 == 0 else list(reversed(models))
        for name in order:
            seconds[name].append(time_steps(train_steps[name], num_steps, target) / num_steps)

    return {
        name: {
            "params": sum(p.numel() for p in models[name].parameters()),
            "images_per_s": batch_size * steps / sum(s * n for s, n in zip(seconds[name], per_round)),
            "ms_per_step_median": 1000 * statistics.median(seconds[name]),
        }
        for name in models
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="vit_cifar_small", choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="autocast dtype (float32: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(describe())
    print(f"config={args.config} {CONFIGS[args.config]}")
    print(f"batch={args.batch_size} dtype={args.dtype} timed steps={args.steps} (+{args.warmup} warmup) "
          f"rounds={args.rounds}")
    results = benchmark(
        args.config, args.batch_size, args.steps, args.warmup, args.rounds, args.device, args.dtype
    )
    print(f"{'model':<32}{'params':>12}{'images/s':>12}{'ms/step (median)':>20}")
    for name, row in results.items():
        print(f"{name:<32}{row['params']:>12,}{row['images_per_s']:>12.1f}{row['ms_per_step_median']:>20.1f}")
    mine, theirs = (row["images_per_s"] for row in results.values())
    print(f"ratio minivit / torchvision: {mine / theirs:.3f}x")


if __name__ == "__main__":
    main()
