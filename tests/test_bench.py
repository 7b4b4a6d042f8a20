import pytest

from minivit.bench import benchmark, main, torchvision_vit
from minivit.vit import CONFIGS, build_vit


def test_torchvision_counterpart_has_the_same_parameter_count():
    config = CONFIGS["vit_cifar_small"]
    count = sum(p.numel() for p in torchvision_vit(config).parameters())
    assert count == sum(p.numel() for p in build_vit("vit_cifar_small").parameters())
    with pytest.raises(ValueError, match="class token"):
        torchvision_vit({**config, "pool": "mean"})


def test_benchmark_runs_and_reports_both_models(capsys):
    results = benchmark("vit_cifar_small", batch_size=2, steps=2, warmup=1, rounds=2, device="cpu")
    assert list(results) == ["minivit ViT", "torchvision VisionTransformer"]
    assert all(row["images_per_s"] > 0 for row in results.values())
    main(["--batch-size", "2", "--steps", "2", "--warmup", "0", "--rounds", "2", "--device", "cpu"])
    assert "ratio minivit / torchvision" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown config"):
        benchmark("vit_giant")
