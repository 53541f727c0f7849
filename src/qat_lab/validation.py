"""One validator per kind of value, and the one way a config group becomes its typed dataclass.

Every bad value becomes a ConfigError of one line that names the key the way a user overrides
it (`optim.matrix_lr=-1 must be positive`), so the CLI can print it before any job starts. The
config dataclasses call these from __post_init__; choice fields are typed `Literal[...]` and
`check_choices` validates all of them from the type hints, so a choice is declared once.
Nothing here imports torch: the preflight of a whole sweep runs in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from numbers import Integral, Real
from typing import Any, Literal, get_args, get_origin

from qat_lab.errors import ConfigError, DataError


def is_number(value: Any, finite: bool = True) -> bool:
    """A real number, finite unless `finite=False` (NaN and inf are numbers when ordering table
    values); bool is not one (`true` as a learning rate is a typo, not 1)."""
    return not isinstance(value, bool) and isinstance(value, Real) and (not finite or math.isfinite(value))


def number(key: str, value: Any) -> float:
    if not is_number(value):
        raise ConfigError(f"{key}={value} must be a finite number")
    return float(value)


def positive(key: str, value: Any) -> float:
    if number(key, value) <= 0:
        raise ConfigError(f"{key}={value} must be positive")
    return float(value)


def non_negative(key: str, value: Any) -> float:
    if number(key, value) < 0:
        raise ConfigError(f"{key}={value} must be non-negative")
    return float(value)


def in_range(key: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
             hint: str = "") -> float:
    """low <= value <= high (either end open if asked); `hint` replaces the default message tail."""
    v = value if is_number(value) else None
    ok = v is not None and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{key}={value} {hint or f'must be in {interval}'}")
    return float(value)


def integer(key: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """An integer (an integral float such as 16.0 is accepted and returned as int) in [low, high]."""
    ok = not isinstance(value, bool) and (isinstance(value, Integral) or (is_number(value) and float(value).is_integer()))
    if ok:
        value = int(value)
        ok = (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            bound = f" in [{low}, {high}]"
        elif low is not None:
            bound = " >= 0" if low == 0 else " >= 1" if low == 1 else f" >= {low}"
        else:
            bound = ""
        kind = "a positive integer" if low == 1 and high is None else f"an integer{bound}"
        raise ConfigError(f"{key}={value} must be {kind}")
    return value


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value} must be true or false")
    return value


def choice(key: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        tail = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{key}={value} is not one of {', '.join(map(str, allowed))}{tail}")
    return value


@functools.cache
def _choice_fields(cls: type) -> dict[str, tuple]:
    """field -> allowed values, for every field typed Literal[...] (or Literal[...] | None)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = get_args(hint)
        if get_origin(hint) is Literal:
            out[name] = args
        elif any(get_origin(a) is Literal for a in args):  # Optional[Literal[...]]
            lit = next(a for a in args if get_origin(a) is Literal)
            out[name] = get_args(lit) + ((None,) if type(None) in args else ())
    return out


def check_choices(obj: Any, prefix: str) -> None:
    """Validate every Literal-typed field of a dataclass instance (`prefix`: its config group)."""
    for name, allowed in _choice_fields(type(obj)).items():
        choice(f"{prefix}.{name}", getattr(obj, name), allowed)


def build_dataclass(values: dict[str, Any], group: str, cls: type | None = None) -> Any:
    """The dataclass a config group names in `_target_` (or `cls`), built from plain values.

    Unknown keys are one line listing the known ones (with the nearest as a suggestion); wrong
    types that the dataclass itself does not catch become one line too.
    """
    values = dict(values)
    target = values.pop("_target_", None)
    if cls is None:
        if target is None:
            raise ConfigError(f"config group '{group}' has no _target_")
        from hydra.utils import get_class

        cls = get_class(target)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {group}.{near[0]}?)" if near else ""
        raise ConfigError(f"{group}.{unknown[0]} is not an option of {cls.__name__}{hint}; "
                          f"known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except (ConfigError, DataError):
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{group}: {e}") from None
