"""How settings may be spelled: durations with units, choices in any case, and one-line errors.

No I/O: workers/settings.py applies these to the model and its loader.
"""

from __future__ import annotations

import difflib
import math
import re
import types
from collections.abc import Collection, Iterable, Mapping
from datetime import timedelta
from fractions import Fraction
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BeforeValidator, ValidationError

#: Seconds per unit. Fractions, so 0.1s + 200ms is exactly 0.3 s and 1.5s is exactly 1500 ms.
UNITS: dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86_400),
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# "ms" before "m": 5ms is milliseconds, 5m minutes. Parts may repeat in any order, as in Go (1h30m, 90m).
_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|s|m|h|d)", re.IGNORECASE)
_PARTS = re.compile(rf"(?:{_PART.pattern})+\s*", re.IGNORECASE)
_PLAIN = re.compile(rf"\s*[+-]?{_NUMBER}(?:[eE][+-]?\d+)?\s*")
DURATION_HINT = "not a duration (use 30s, 5m, 24h or seconds)"
MILLIS_HINT = "not a duration (use 500ms, 2s or milliseconds)"


def _with_units(text: str) -> Fraction | None:
    """``1h30m`` -> 5400 seconds; None unless the whole text is number+unit parts."""
    if not _PARTS.fullmatch(text):
        return None
    return sum((Fraction(n) * UNITS[u.lower()] for n, u in _PART.findall(text)), Fraction(0))


def seconds_of(value: Any) -> Fraction | None:
    """Exact seconds of ``30``, ``"0.5"``, ``"24h"``, ``"1h30m"``, ``"500ms"``, a timedelta; None if not one."""
    if isinstance(value, bool):  # an int to Python, never a duration to a person
        return None
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value) if math.isfinite(value) else None
    if isinstance(value, timedelta):
        return Fraction(value.days * 86_400 + value.seconds) + Fraction(value.microseconds, 1_000_000)
    if not isinstance(value, str):
        return None
    if _PLAIN.fullmatch(value):
        return Fraction(value.strip())
    return _with_units(value)


def _to_seconds(value: Any) -> float:
    seconds = seconds_of(value)
    if seconds is None:
        raise ValueError(DURATION_HINT)
    return float(seconds)  # range checks (gt=0...) are the field's


def _to_millis(value: Any) -> Any:
    """A plain number is milliseconds already (pydantic parses it); ``2s``/``500ms`` are converted."""
    if not isinstance(value, str) or _PLAIN.fullmatch(value):
        return value
    seconds = _with_units(value)
    if seconds is None:
        raise ValueError(MILLIS_HINT)
    millis = seconds * 1000
    if millis.denominator != 1:
        raise ValueError("not a whole number of milliseconds")
    return int(millis)


#: Seconds, as a float: ``30``, ``2.5``, ``30s``, ``5m``, ``24h``, ``1h30m``, ``500ms``, ``2d``.
Duration = Annotated[float, BeforeValidator(_to_seconds)]
#: Whole milliseconds (fields named ``*_ms``): ``500`` is 500 ms; ``2s`` is 2000, ``500ms`` 500.
Millis = Annotated[int, BeforeValidator(_to_millis)]


def literal_choices(annotation: Any) -> tuple[str, ...]:
    """The string choices of a ``Literal[...]`` annotation (inside Optional/Annotated too); () otherwise."""
    origin = get_origin(annotation)
    if origin is Literal:
        return tuple(a for a in get_args(annotation) if isinstance(a, str))
    if origin is Annotated:
        return literal_choices(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return tuple(c for arg in get_args(annotation) for c in literal_choices(arg))
    return ()


def fold_choice(value: Any, choices: Iterable[str]) -> Any:
    """``INFO`` -> ``info``, ``sasl_ssl`` -> ``SASL_SSL``: the choice as the model spells it, else as given."""
    if not isinstance(value, str):
        return value
    wanted = value.strip().casefold()
    return next((c for c in choices if c.casefold() == wanted), value)


def unknown_names(names: Iterable[str], prefix: str, known: Collection[str], allowed: Collection[str]) -> list[str]:
    """One message per ``<prefix>*`` name that is neither a setting nor allowed, with the closest setting."""
    out = []
    for name in sorted(set(names)):
        upper = name.upper()
        if not upper.startswith(prefix) or upper in known or upper in allowed:
            continue
        # Compared without the prefix, which every name shares and would make anything look close.
        close = difflib.get_close_matches(upper[len(prefix) :], [k[len(prefix) :] for k in known], n=1)
        out.append(f"unknown setting {name}" + (f" (did you mean {prefix}{close[0]}?)" if close else ""))
    return out


def describe_errors(exc: ValidationError, prefix: str, raw: Mapping[str, str], secret: Collection[str]) -> list[str]:
    """One ``invalid setting NAME='value': why`` per field. ``raw``: values as written, by upper-case name."""
    out, seen = [], set()
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        if field in seen:  # a union field fails once per member: the first reason says it
            continue
        seen.add(field)
        why = error["msg"].removeprefix("Value error, ")
        why = why[:1].lower() + why[1:]
        if not field:
            out.append(f"invalid settings: {why}")
            continue
        name = prefix + field.upper()
        shown = "'**********'" if field in secret else repr(raw.get(name, error.get("input")))
        out.append(f"invalid setting {name}={shown}: {why}")
    return out
