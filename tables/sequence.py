"""Per-aggregate sequence state: next expected number, parking, activity."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Parked:
    """Why and since when an aggregate is held. ``seq`` is the number it waits for."""

    seq: int
    reason: str  # an error class, or "gap"
    since: float


@dataclass(slots=True)
class SequenceState:
    next_seq: int | None = None  # None: no event seen yet
    parked: Parked | None = None
    last_active: float = 0.0
