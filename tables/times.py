"""``--since`` for every command that takes one (scan, audit, dlq): a duration back from now,
an ISO-8601 time or epoch seconds. Pure: ``now`` is passed in."""

from __future__ import annotations

import math
import re
from datetime import datetime

_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATIONS = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")


def parse_since(text: str, now: float, option: str = "--since") -> float:
    """``--since`` as epoch seconds: a duration back from ``now`` (``15m``, ``2h``, ``1d``,
    ``1h30m``; units s m h d w), an ISO-8601 time (without an offset: local time, as the
    ``dlq`` commands take it), or epoch seconds. ValueError if it is none of them."""
    text = text.strip()
    if _DURATIONS.fullmatch(text):
        return now - sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))
    try:
        value = float(text)
    except ValueError:
        try:
            value = datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError, OSError):
            value = math.nan
    if not math.isfinite(value):
        raise ValueError(
            f"{option} {text[:40]!r} is neither a duration (15m, 2h, 1d), an ISO-8601 time nor epoch seconds"
        )
    return value
