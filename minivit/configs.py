"""The base of every config dataclass: ``ViTConfig``, ``SmallCNNConfig``, ``DETRConfig`` and ``TrainConfig``.

A config is a frozen dataclass whose fields say what they mean and which values are valid::

    @dataclass(frozen=True)
    class ViTConfig(Config):
        depth: int = setting(6, "transformer blocks", Range(1, integer=True), sane_max=256)

Building one checks every field (:class:`ConfigError` names the field, the valid range and the
value), so a bad value stops at the boundary instead of deep inside a model or a training loop.
``sane_max`` is the largest value a checkpoint file may ask for (see :func:`Config.check_sane`).
For the code written before the dataclasses, a config still reads like a dict:
``config["depth"]``, ``dict(config)`` and ``ViT(**config)`` work.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypeVar

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config field holds a value outside its valid range; ``field`` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


class Check(Protocol):
    """Validates one field: ``check(value)`` returns the value (normalized) or raises ValueError."""

    def describe(self) -> str: ...

    def __call__(self, value: Any) -> Any: ...


@dataclass(frozen=True)
class Range:
    """A finite number (``integer=True``: an int) in ``[low, high]``; ``*_open`` excludes that end."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False
    optional: bool = False  # None is valid too

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            bounds = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            bounds = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            bounds = ""
        text = f"{kind} {bounds}".strip()
        return f"None or {text}" if self.optional else text

    def __call__(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError
        if self.integer and not isinstance(value, int):
            raise ValueError
        if not math.isfinite(value):
            raise ValueError
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise ValueError
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise ValueError
        return value if self.integer else float(value)


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (compared with their type: ``1`` is not ``True``)."""

    values: tuple

    def describe(self) -> str:
        return "one of " + ", ".join(repr(value) for value in self.values)

    def __call__(self, value: Any) -> Any:
        if not any(type(value) is type(allowed) and value == allowed for allowed in self.values):
            raise ValueError
        return value


FLAG = Choice((False, True))


@dataclass(frozen=True)
class Sizes:
    """A tuple of integers >= 1 (a list is turned into a tuple); ``allow_empty`` lets ``()`` through."""

    allow_empty: bool = False

    def describe(self) -> str:
        return "a tuple of integers >= 1" + (" (or empty)" if self.allow_empty else "")

    def __call__(self, value: Any) -> Any:
        if not isinstance(value, (tuple, list)) or (not value and not self.allow_empty):
            raise ValueError
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise ValueError
        return tuple(value)


def setting(default: Any, help: str, check: Check | None = None, **metadata: Any) -> Any:
    """A config field: its default, one line of help, its :class:`Check`, and any further metadata
    (``sane_max`` for checkpoint files; ``must_match_on_resume``, ``parse`` for the training CLI)."""
    return field(default=default, metadata={"help": help, "check": check, **metadata})


@dataclass(frozen=True)
class Config:
    """Frozen, validated, and readable like a dict. Subclasses add fields with :func:`setting`
    and cross-field rules in :meth:`check_fields`."""

    def __post_init__(self) -> None:
        for item in fields(self):
            check = item.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, item.name)
            try:
                normalized = check(value)
            except ValueError as error:
                why = f": {error}" if str(error) else ""
                raise ConfigError(item.name, f"{type(self).__name__}.{item.name} must be {check.describe()}, "
                                             f"got {value!r}{why}") from None
            object.__setattr__(self, item.name, normalized)
        self.check_fields()

    def check_fields(self) -> None:
        """Rules between fields (e.g. image_size divisible by patch_size); raise :class:`ConfigError`."""

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (tuples become lists), e.g. for a checkpoint or JSON."""
        return {item.name: _plain(getattr(self, item.name)) for item in fields(self)}

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """The config of a dict; unknown keys raise :class:`ConfigError` naming the known ones."""
        cls._check_known(values)
        return cls(**values)

    @classmethod
    def resolve(cls: type[C], config: C | Mapping | None, overrides: Mapping[str, Any]) -> C:
        """``config`` (a config, a dict, or None for the defaults) with ``overrides`` applied."""
        if config is None:
            return cls.from_dict(dict(overrides))
        if isinstance(config, cls):
            return config.replace(**overrides) if overrides else config
        if isinstance(config, Mapping):
            return cls.from_dict({**config, **overrides})
        raise TypeError(f"expected a {cls.__name__}, a dict or None, got {type(config).__name__}")

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (and checked again)."""
        self._check_known(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def _check_known(cls, values: Mapping[str, Any]) -> None:
        known = [item.name for item in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(unknown[0], f"{cls.__name__} has no field(s) {', '.join(unknown)}; "
                                          f"its fields are {', '.join(known)}")

    def check_sane(self) -> None:
        """Every field within its ``sane_max``: the sizes a checkpoint file may ask for."""
        for item in fields(self):
            limit = item.metadata.get("sane_max")
            values = getattr(self, item.name)
            for value in values if isinstance(values, tuple) else (values,):
                if limit is not None and value is not None and value > limit:
                    raise ConfigError(item.name, f"{type(self).__name__}.{item.name}={values} is beyond the sane "
                                                 f"limit {limit} for a stored config")

    # ------------------------------------------------------------------ read like the dict it replaced
    def keys(self) -> list[str]:
        return [item.name for item in fields(self)]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def positive(default: int, help: str, sane_max: int | None = None) -> Any:
    """An integer field >= 1."""
    return setting(default, help, Range(1, integer=True), sane_max=sane_max)


def probability(default: float, help: str) -> Any:
    """A float field in [0, 1)."""
    return setting(default, help, Range(0, 1, high_open=True))
