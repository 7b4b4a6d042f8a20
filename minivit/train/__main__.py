"""``python -m minivit.train``: chapter 4's recipe from the command line, one process or several.

    python -m minivit.train --config vit_cifar_small --profile cpu --out runs/cpu
    torchrun --nproc_per_node=2 -m minivit.train --config vit_cifar_small --profile cpu --out runs/ddp

Every field of :class:`~minivit.train.TrainConfig` and :class:`~minivit.train.DataConfig` is a flag
(``batch_size`` -> ``--batch-size``) with the field's help and valid range; a flag not given keeps the
profile's value (:data:`~minivit.train.recipes.RECIPES`). Out-of-range values are argparse errors.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import typing
from dataclasses import fields
from pathlib import Path

import torch
import torch.distributed as dist

from minivit.configs import Choice, Config, ConfigError
from minivit.devices import Stopwatch, get_device
from minivit.models import MODEL_CONFIGS, architecture_of, build_from_config
from minivit.train.checkpoint import TEMP_SUFFIX, export_checkpoint, read_checkpoint, write_atomically
from minivit.train.config import DataConfig, TrainConfig
from minivit.train.distributed import init_from_environment, rank_and_world_size
from minivit.train.history import History
from minivit.train.loop import TrainingDiverged, fit
from minivit.train.planner import plan_epochs
from minivit.train.recipes import RECIPES

CLASSIFIERS = [name for name, config in MODEL_CONFIGS.items() if architecture_of(config) in ("vit", "small_cnn")]
PLANNER_RESERVE_SECONDS = 30  # the planner's own measuring (~23 s on the 2-core CPU: 3 passes and a 10-view test)


# --------------------------------------------------------------------------- flags from dataclass fields
def _parse_optional(kind: type):
    def parse(text: str):
        return None if text.strip().lower() == "none" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its "invalid ... value" message
    return parse


def _with_message(parse):
    """``parse`` for argparse's ``type=``: its ValueError's own message, not argparse's "invalid ... value"."""
    def checked(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return checked


class _SwitchOrValue(argparse.Action):
    """``--name`` (True), ``--no-name`` (False) or ``--name VALUE`` (parsed): for ``compile``."""

    def __init__(self, option_strings, dest, parse, **kwargs):
        negative = ["--no-" + option[2:] for option in option_strings]
        super().__init__(option_strings + negative, dest, nargs="?", **kwargs)
        self.parse = parse

    def __call__(self, parser, namespace, value, option_string=None):
        if option_string.startswith("--no-"):
            if value is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
        else:
            try:
                setattr(namespace, self.dest, True if value is None else self.parse(value))
            except ValueError as error:
                parser.error(f"argument {option_string}: {error}")


def add_config_flags(parser: argparse.ArgumentParser, config_class: type[Config], title: str,
                     profile_values: dict[str, Config]) -> None:
    """One flag per field of ``config_class``: type from the annotation (or the field's ``parse``),
    help and range from the field's metadata, the profiles' values in the help. Flags not given are
    absent from the parsed namespace."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(config_class)
    for item in fields(config_class):
        flag, hint, metadata = "--" + item.name.replace("_", "-"), hints[item.name], item.metadata
        check = metadata.get("check")
        shown = ", ".join(f"{name} {_show(getattr(values, item.name, item.default))}"
                          for name, values in profile_values.items())
        help_text = f"{metadata.get('help', '')} [{check.describe() if check else 'any'}; profiles: {shown}]"
        options = dict(dest=item.name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if "metavar" in metadata:
            options["metavar"] = metadata["metavar"]
        if "parse" in metadata and hint is not bool:
            if bool in typing.get_args(hint):
                group.add_argument(flag, action=_SwitchOrValue, parse=metadata["parse"], **options)
            else:
                group.add_argument(flag, type=_with_message(metadata["parse"]), **options)
        elif hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif hint is str and isinstance(check, Choice):
            group.add_argument(flag, choices=check.values, **options)
        elif hint in (int, float, str):
            group.add_argument(flag, type=hint, **options)
        elif set(typing.get_args(hint)) in ({int, type(None)}, {float, type(None)}):
            kind = next(arg for arg in typing.get_args(hint) if arg is not type(None))
            group.add_argument(flag, type=_parse_optional(kind), metavar=f"{kind.__name__.upper()}|none", **options)
        else:
            raise TypeError(f"{config_class.__name__}.{item.name}: no command-line type for {hint}; "
                            f"give the field a parse= function")


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (tuple, list)) else str(value)


def build_parser(train_config: type[TrainConfig] = TrainConfig,
                 data_config: type[DataConfig] = DataConfig) -> argparse.ArgumentParser:
    """The parser of ``python -m minivit.train``: the run's own flags, then one per config field."""
    parser = argparse.ArgumentParser(prog="python -m minivit.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, choices=CLASSIFIERS,
                        help="the model, a name of minivit.models.MODEL_CONFIGS (default: the profile's)")
    parser.add_argument("--model", default="{}",
                        help='JSON of model config overrides, e.g. \'{"dim": 128, "depth": 4}\'')
    parser.add_argument("--profile", default=None, choices=tuple(RECIPES),
                        help="recipe to use (default: $MINIVIT_PROFILE, else gpu with CUDA, else cpu)")
    parser.add_argument("--out", required=True, help="output folder: last.pt, history.json")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="minutes for the whole run: the epochs are planned from a measured step time, "
                             "unless --epochs is given (default: the profile's: "
                             + ", ".join(f"{name} {recipe.time_budget_minutes}" for name, recipe in RECIPES.items())
                             + "; 0 = use the profile's epochs)")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/last.pt exists")
    parser.add_argument("--export", default=None, help="also write a small inference checkpoint to this path")
    add_config_flags(parser, train_config, "training (TrainConfig)", {n: r.train for n, r in RECIPES.items()})
    add_config_flags(parser, data_config, "data (DataConfig)", {n: r.data for n, r in RECIPES.items()})
    return parser


def configs_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, profile: str,
                      train_config: type[TrainConfig] = TrainConfig) -> tuple[TrainConfig, DataConfig]:
    """The profile's configs with the flags that were given; an invalid value is an argparse error."""
    recipe = RECIPES[profile]
    configs = []
    for base, config_class in ((recipe.train, train_config), (recipe.data, DataConfig)):
        given = {item.name: getattr(args, item.name) for item in fields(config_class) if hasattr(args, item.name)}
        try:
            configs.append(config_class(**{**base.to_dict(), **given}))
        except ConfigError as error:
            parser.error(f"argument --{error.field.replace('_', '-')}: {error}")
    if args.time_budget is not None and not 0 <= args.time_budget < float("inf"):
        parser.error(f"argument --time-budget: must be a finite number >= 0 (minutes), got {args.time_budget}")
    return configs[0], configs[1]


# --------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> History:
    """Parse the flags, load CIFAR-10, plan the epochs if there is a time budget, train, write the summary."""
    from minivit.data import load_cifar10
    from minivit.runtime import get_profile, seed_everything

    clock = Stopwatch.start()
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python -m minivit.train " + shlex.join(sys.argv[1:] if argv is None else argv)  # copy-pastable
    profile = args.profile or get_profile()
    config, data = configs_from_args(parser, args, profile)
    model_name = args.config or RECIPES[profile].model
    model_overrides, model_config = _model_config(parser, args.model, model_name)
    _check_output_paths(parser, args)  # before any data is loaded or step taken, not after the whole run
    _check_batch_fits(parser, config, data)
    _warn_if_profile_needs_gpu(profile)
    world_size = init_from_environment()
    seed_everything(config.seed)
    train_set = load_cifar10("train", limit=data.train_limit)
    test_set = load_cifar10("test", limit=data.test_limit)
    model = build_from_config(model_config)  # after seeding: the same weights on every rank
    augment = data.augment()
    out = Path(args.out)
    config = _choose_epochs(config, args, profile, out, model, train_set, test_set, augment, clock)
    rank = rank_and_world_size()[0]
    if rank == 0:
        print(f"data: {train_set.source}", flush=True)
        params = sum(p.numel() for p in model.parameters())
        named = f"{model_name} {model_overrides}" if model_overrides else model_name
        print(f"{named} ({params / 1e6:.2f} M parameters), profile {profile}, "
              f"{world_size} process(es), {config}, {data}", flush=True)
    try:
        history = fit(model, train_set, test_set, config, augment=augment, checkpoint_dir=out,
                      resume=not args.no_resume)
    except TrainingDiverged as error:
        raise SystemExit(f"error: {error}") from None
    if rank == 0:
        _write_summary(out, args, command, profile, world_size, history, test_set.source, clock)
    if dist.is_initialized():
        dist.destroy_process_group()
    return history


def _model_config(parser: argparse.ArgumentParser, text: str, model_name: str):
    """``--model``: a JSON object of config overrides -> ``(overrides, config)``; an argparse error otherwise."""
    base = MODEL_CONFIGS[model_name]
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        parser.error(f"argument --model: not valid JSON ({error.msg} at character {error.pos + 1} of {text!r}); "
                     f"give an object of {type(base).__name__} fields in quotes, e.g. --model '{{\"dim\": 128}}'")
    if not isinstance(overrides, dict):
        parser.error(f"argument --model: must be a JSON object of {type(base).__name__} fields, e.g. "
                     f"'{{\"dim\": 128}}', got {text!r}")
    try:
        return overrides, base.replace(**overrides)
    except (ValueError, TypeError) as error:  # ConfigError is a ValueError
        parser.error(f"argument --model: {error}")


def _check_batch_fits(parser: argparse.ArgumentParser, config: TrainConfig, data: DataConfig) -> None:
    """A training limit below one batch would stop fit() after the data is loaded: say so now."""
    if data.train_limit is not None and data.train_limit < config.batch_size:
        parser.error(f"argument --train-limit: {data.train_limit} images are fewer than one batch of "
                     f"{config.batch_size}; "
                     f"raise --train-limit or lower --batch-size")


def _warn_if_profile_needs_gpu(profile: str) -> None:
    """The ``gpu`` recipe on a machine without CUDA runs, but at CPU speed: say what that costs."""
    if profile != "gpu" or get_device().type == "cuda":
        return
    recipe, budget = RECIPES["gpu"], RECIPES["cpu"].time_budget_minutes
    print(f"warning: profile 'gpu' without a CUDA GPU runs on {get_device().type}: its recipe "
          f"({recipe.train.epochs} epochs, batch {recipe.train.batch_size}, {recipe.data.train_limit or 'all'} "
          f"training images) is sized for a GPU and will take far longer here than the {budget:g} minutes of the "
          f"cpu profile; "
          f"use --profile cpu", file=sys.stderr, flush=True)


RUN_FILES = ("last.pt", "history.json")  # what a run writes into --out (each also as NAME.tmp while writing)


def _probe_writable(folder: Path) -> None:
    """Create and delete a uniquely named file in ``folder``; raises OSError where that fails."""
    import tempfile

    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", suffix=".probe"):
        pass


def _check_output_paths(parser: argparse.ArgumentParser, args) -> None:
    """``--out`` must be (or become) a writable folder and ``--export`` a writable file path that is none
    of the run's own files; an argparse error with the fix otherwise."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {out} exists and is not a folder; give a folder path (the run writes "
                     f"{', '.join(RUN_FILES)} into it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        _probe_writable(out)
    except OSError as error:
        parser.error(f"argument --out: cannot write into the folder {out} ({error.strerror or error}); "
                     f"choose a writable folder or fix its permissions")
    if args.export is None:
        return
    export = Path(args.export)
    if export.is_dir():
        parser.error(f"argument --export: {export} is a folder; give a file path, e.g. {export / 'model.pt'}")
    own = {(out / (name + suffix)).resolve() for name in RUN_FILES for suffix in ("", TEMP_SUFFIX)}
    if export.resolve() in own:
        parser.error(f"argument --export: {export} is one of the run's own files in --out "
                     f"({', '.join(RUN_FILES)}); exporting onto it would overwrite the resumable checkpoint or the "
                     f"history. Export elsewhere, e.g. --export {out / 'export.pt'}")
    if not export.parent.is_dir():
        parser.error(f"argument --export: the folder {export.parent} does not exist; create it first "
                     f"(mkdir -p {shlex.quote(str(export.parent))}) or export elsewhere")
    try:
        _probe_writable(export.parent)
    except OSError as error:
        parser.error(f"argument --export: cannot write into the folder {export.parent} "
                     f"({error.strerror or error}); choose a writable folder")


def _choose_epochs(config: TrainConfig, args, profile: str, out: Path, model, train_set, test_set, augment,
                   clock: Stopwatch) -> TrainConfig:
    """Resuming: the interrupted run's epochs and warmup. With a time budget and no --epochs: as many
    epochs as the planner measures to fit (warmup at most a fifth of them). Else the config's."""
    resuming = (out / "last.pt").is_file() and not args.no_resume
    budget = args.time_budget if args.time_budget is not None else RECIPES[profile].time_budget_minutes
    if resuming and not hasattr(args, "epochs"):  # keep the plan of the interrupted run
        stored = read_checkpoint(out / "last.pt")["meta"].get("train_config", {})
        return config.replace(**{key: stored[key] for key in ("epochs", "warmup") if key in stored})
    if not budget or hasattr(args, "epochs"):
        return config
    rank, world_size = rank_and_world_size()
    per_process = config.replace(batch_size=max(1, config.batch_size // world_size))
    planned, epoch_seconds = plan_epochs(model, train_set, test_set,
                                         60 * budget - clock.seconds - PLANNER_RESERVE_SECONDS, per_process,
                                         augment=augment)
    if world_size > 1:  # every rank must run the same number of epochs: take rank 0's plan
        plan = torch.tensor([planned], dtype=torch.float64)
        dist.broadcast(plan, 0)
        planned = int(plan.item())
    if rank == 0:
        print(f"time budget {budget:g} min: measured ~{epoch_seconds:.0f} s per epoch -> {planned} epochs", flush=True)
    return config.replace(epochs=planned, warmup=min(config.warmup, planned / 5))  # not all warmup


def _write_summary(out: Path, args, command: str, profile: str, world_size: int, history: History, data: str,
                   clock: Stopwatch) -> None:
    wall = clock.seconds
    summary = {"command": command, "profile": profile, "processes": world_size, "wall_seconds": wall,
               "test_acc": history.test_acc[-1], "data": data, "hardware": hardware(), "history": history.to_dict()}
    write_json_atomic(out / "history.json", summary)
    print(f"done: test accuracy {history.test_acc[-1]:.2%} on {data}, {wall / 60:.1f} min "
          f"wall-clock (with data loading) on {hardware()}")
    if args.export:
        export_checkpoint(out / "last.pt", args.export, command=command, test_acc=history.test_acc[-1],
                          wall_seconds=wall, hardware=hardware())
        print(f"exported {args.export}")


def _finite_or_none(value):
    """``value`` with every NaN/inf float replaced by None (JSON null), recursively."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def write_json_atomic(path: Path, value) -> None:
    """Write ``value`` as strict JSON (NaN/inf as null) to a temp file, then rename it over ``path``."""
    text = json.dumps(_finite_or_none(value), indent=1, allow_nan=False)
    write_atomically(path, lambda tmp: tmp.write_text(text))


def hardware() -> str:
    """The GPU's name, or the CPU's cores and threads."""
    if get_device().type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    main()
