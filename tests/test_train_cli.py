"""``python -m minivit.train``: flags generated from the config fields, clean errors, a short real run."""
import json
import re
from dataclasses import fields, make_dataclass

import pytest

from minivit.configs import Range, setting
from minivit.train import DataConfig, TrainConfig, TrainingDiverged, load_checkpoint
from minivit.train.__main__ import build_parser, configs_from_args, main
from minivit.train.recipes import RECIPES


def parse(argv, train_config=TrainConfig):
    parser = build_parser(train_config)
    args = parser.parse_args(["--out", "runs/x", *argv])
    return configs_from_args(parser, args, args.profile or "cpu", train_config)


def flags(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_config_field_is_a_flag_and_the_profiles_are_the_defaults():
    parser = build_parser()
    for config_class in (TrainConfig, DataConfig):
        for item in fields(config_class):
            assert "--" + item.name.replace("_", "-") in flags(parser), item.name
    for profile, recipe in RECIPES.items():
        assert parse(["--profile", profile]) == (recipe.train, recipe.data)
    assert "profiles: smoke 2, cpu 25, gpu 200" in helps(parser)["--epochs"]


def helps(parser) -> dict[str, str]:
    return {option: action.help for action in parser._actions for option in action.option_strings}


def test_a_field_added_to_train_config_appears_as_a_flag():
    extended = make_dataclass("ExtendedTrainConfig", [("mixup", float, setting(0.0, "mixup alpha", Range(0)))],
                              bases=(TrainConfig,), frozen=True)
    parser = build_parser(extended)
    assert helps(parser)["--mixup"] == "mixup alpha [a finite number >= 0; profiles: smoke 0.0, cpu 0.0, gpu 0.0]"
    config, _ = parse(["--mixup", "0.2", "--lr", "0.01"], extended)
    assert config.mixup == 0.2 and config.lr == 0.01 and config.epochs == RECIPES["cpu"].train.epochs
    assert parse([], extended)[0].mixup == 0.0


def test_todays_flags_keep_working():
    config, data = parse(["--config", "vit_cifar_small", "--profile", "gpu", "--time-budget", "5", "--seed", "3",
                          "--no-resume", "--export", "e.pt", "--model", '{"dim": 64}', "--progressive", "none",
                          "--no-compile", "--no-tta-flip", "--trivial-augment", "--ema-decay", "0.99",
                          "--train-limit", "100", "--test-limit", "50", "--crop-padding", "2", "--epochs", "3",
                          "--batch-size", "64", "--lr", "1e-3", "--weight-decay", "0", "--warmup", "0.5",
                          "--label-smoothing", "0", "--grad-clip", "0.5", "--amp", "off", "--eval-every", "2",
                          "--tta-shift", "1"])
    assert config == TrainConfig(epochs=3, batch_size=64, lr=1e-3, weight_decay=0.0, warmup=0.5, label_smoothing=0.0,
                                 grad_clip=0.5, ema_decay=0.99, tta_flip=False, tta_shift=1, seed=3, amp="off",
                                 compile=False, progressive=None, eval_every=2)
    assert data == DataConfig(train_limit=100, test_limit=50, crop_padding=2, trivial_augment=True)
    assert parse(["--progressive", "[[16, 0.4], [32, 0.6]]", "--compile"])[0].progressive == ((16, 0.4), (32, 0.6))
    assert parse(["--compile"])[0].compile is True and parse(["--compile", "auto"])[0].compile == "auto"
    assert parse(["--ema-decay", "none", "--grad-clip", "none"])[0].ema_decay is None


@pytest.mark.parametrize("argv, message", [
    (["--grad-clip", "-1"], r"argument --grad-clip: TrainConfig\.grad_clip must be None or a finite number >= 0"),
    (["--lr", "-0.1"], r"argument --lr: TrainConfig\.lr must be a finite number > 0, got -0\.1"),
    (["--lr", "nan"], r"argument --lr: .*got nan"),
    (["--label-smoothing", "1"], r"argument --label-smoothing: .*in \[0, 1\), got 1\.0"),
    (["--batch-size", "0"], "argument --batch-size: .*an integer >= 1"),
    (["--ema-decay", "1"], r"argument --ema-decay: .*None or a finite number in \(0, 1\)"),
    (["--warmup", "-1"], "argument --warmup: .*>= 0"),
    (["--warmup", "inf"], "argument --warmup: .*finite number >= 0, got inf"),
    (["--weight-decay", "-1"], r"argument --weight-decay: TrainConfig\.weight_decay must be a finite number >= 0"),
    (["--weight-decay", "nan"], "argument --weight-decay: .*got nan"),
    (["--grad-clip", "nan"], "argument --grad-clip: .*got nan"),
    (["--progressive", "[[16, 0.5]]"], "argument --progressive: .*add up to 1"),
    (["--train-limit", "0"], r"argument --train-limit: DataConfig\.train_limit must be None or an integer >= 1"),
    (["--amp", "fp8"], "argument --amp: invalid choice"),
    (["--epochs", "2.5"], "argument --epochs: invalid int value"),
    (["--compile", "maybe"], "argument --compile: expected auto, on or off"),
    (["--time-budget", "-5"], "argument --time-budget: must be a finite number >= 0"),
    (["--time-budget", "nan"], r"argument --time-budget: .*got nan"),
])
def test_out_of_range_flags_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as caught:
        parse(argv)
    assert caught.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("model, message", [('{"dim": 30}', "dim=30 is not divisible by num_heads=4"),
                                            ('{"width": 3}', "has no field"), ("{dim: 3}", "Expecting property")])
def test_bad_model_overrides_stop_before_any_data_is_loaded(model, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["--profile", "smoke", "--out", str(tmp_path), "--model", model])
    error = capsys.readouterr().err
    assert caught.value.code == 2 and "argument --model" in error and message in error


def test_a_short_run_trains_exports_and_resumes(tmp_path, capsys):
    argv = ["--profile", "smoke", "--config", "vit_cifar_small", "--model", '{"depth": 1}', "--out", str(tmp_path),
            "--train-limit", "200", "--test-limit", "100", "--epochs", "1", "--batch-size", "50",
            "--export", str(tmp_path / "export.pt")]
    history = main(argv)
    assert history.epochs == 1
    summary = json.loads((tmp_path / "history.json").read_text())
    assert summary["command"] == "python -m minivit.train " + " ".join(
        a if " " not in a and "{" not in a else f"'{a}'" for a in argv)
    model, info = load_checkpoint(tmp_path / "export.pt")
    assert model.config.depth == 1 and info["command"] == summary["command"] and info["train_size"] == 200
    assert info["train_config"]["batch_size"] == 50 and "hardware" in info
    main(argv[:-2])  # again: resumes after the finished epoch
    assert "resumed from last.pt after epoch 1/1" in capsys.readouterr().out


def test_divergence_ends_the_command_with_the_message(tmp_path, monkeypatch):
    import minivit.train.__main__ as cli

    def diverging_fit(*args, **kwargs):
        raise TrainingDiverged("training diverged: the loss is nan at epoch 1/1, step 2/4, learning rate 0.002; "
                               "Hint: lower --lr", 1, 2, 2e-3, float("nan"))

    monkeypatch.setattr(cli, "fit", diverging_fit)
    with pytest.raises(SystemExit, match="error: training diverged: the loss is nan at epoch 1/1, step 2/4"):
        main(["--profile", "smoke", "--out", str(tmp_path), "--train-limit", "100", "--test-limit", "50"])


def _refused_before_training(argv, monkeypatch, capsys):
    """main(argv) must stop with an argparse error before loading any data; returns the error text."""
    import minivit.data

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before the output paths were checked")

    monkeypatch.setattr(minivit.data, "load_cifar10", no_data)
    with pytest.raises(SystemExit) as caught:
        main(["--profile", "smoke", "--train-limit", "100", "--test-limit", "50", *argv])
    assert caught.value.code == 2
    return capsys.readouterr().err


def test_out_that_is_a_file_or_unwritable_stops_before_training(tmp_path, monkeypatch, capsys):
    """Issue 13, finding 9: these failed only after the whole run."""
    import minivit.train.__main__ as cli

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    error = _refused_before_training(["--out", str(a_file)], monkeypatch, capsys)
    assert "argument --out" in error and "is not a folder" in error
    error = _refused_before_training(["--out", str(a_file / "run")], monkeypatch, capsys)
    assert "argument --out" in error and str(a_file / "run") in error

    def read_only(folder):  # chmod does not stop root, so a read-only folder is simulated
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(cli, "_probe_writable", read_only)
    error = _refused_before_training(["--out", str(tmp_path / "ro")], monkeypatch, capsys)
    assert "argument --out: cannot write into the folder" in error and "Permission denied" in error


def test_export_into_a_missing_or_unwritable_folder_stops_before_training(tmp_path, monkeypatch, capsys):
    import minivit.train.__main__ as cli

    missing = tmp_path / "nowhere" / "model.pt"
    error = _refused_before_training(["--out", str(tmp_path / "run"), "--export", str(missing)], monkeypatch, capsys)
    assert "argument --export" in error and "does not exist" in error and str(missing.parent) in error
    error = _refused_before_training(["--out", str(tmp_path / "run"), "--export", str(tmp_path)], monkeypatch, capsys)
    assert "argument --export" in error and "is a folder" in error
    real_probe = cli._probe_writable

    def export_folder_read_only(folder):
        if folder == tmp_path / "ro":
            raise PermissionError(13, "Permission denied", str(folder))
        real_probe(folder)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(cli, "_probe_writable", export_folder_read_only)
    error = _refused_before_training(["--out", str(tmp_path / "run"), "--export", str(tmp_path / "ro" / "m.pt")],
                                     monkeypatch, capsys)
    assert "argument --export: cannot write into the folder" in error


@pytest.mark.parametrize("name", ["last.pt", "history.json", "last.pt.tmp"])
def test_export_onto_the_runs_own_files_is_refused(name, tmp_path, monkeypatch, capsys):
    """Issue 13, finding 11: --export OUT/last.pt overwrote the resumable checkpoint with the slim export."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"the resumable checkpoint")
    error = _refused_before_training(["--out", str(out), "--export", str(out / "sub" / ".." / name)],
                                     monkeypatch, capsys)
    assert "argument --export" in error and "one of the run's own files" in error
    assert (out / "last.pt").read_bytes() == b"the resumable checkpoint"


def test_history_json_is_strict_json_with_null_for_nan_and_written_atomically(tmp_path, monkeypatch):
    """Issue 13, finding 16: history.json held bare NaN (invalid JSON) and was written in place."""
    import argparse
    import os

    import minivit.train.__main__ as cli
    from minivit.devices import Stopwatch
    from minivit.train.history import History

    history = History()
    history.append(train_loss=float("nan"), train_acc=0.1, test_loss=float("inf"), test_acc=0.25, lr=1e-3,
                   seconds=1.0)
    replaced = []
    real_replace = os.replace

    def recording_replace(source, target):
        replaced.append((str(source), str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    cli._write_summary(tmp_path, argparse.Namespace(export=None), "python -m minivit.train", "smoke", 1, history,
                       "data", Stopwatch.start())

    def no_constants(name):
        raise AssertionError(f"history.json holds the non-JSON constant {name}")

    summary = json.loads((tmp_path / "history.json").read_text(), parse_constant=no_constants)
    assert summary["history"]["train_loss"] == [None] and summary["history"]["test_loss"] == [None]
    assert summary["test_acc"] == 0.25
    assert replaced == [(str(tmp_path / "history.json.tmp"), str(tmp_path / "history.json"))]


def test_help_names_only_files_a_run_writes():
    """Issue 13, finding 16: --help promised a final.pt that was never written."""
    text = build_parser().format_help()
    assert "final.pt" not in text
    assert "last.pt, history.json" in " ".join(text.split())
