"""Per-aggregate sequence state: next expected number, parking, activity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tables.changelog import changelog_table


@dataclass(slots=True)
class Parked:
    """Why and since when an aggregate is held. ``seq`` is the number it waits for."""

    seq: int
    reason: str  # an error class, or "gap"
    since: float

    def to_json(self) -> list[Any]:
        return [self.seq, self.reason, self.since]


@dataclass(slots=True)
class SequenceState:
    next_seq: int | None = None  # None: no event seen yet
    parked: Parked | None = None
    last_active: float = 0.0
    partition: int | None = None  # the source partition that owns this aggregate

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.next_seq,
            "p": self.parked.to_json() if self.parked else None,
            "a": self.last_active,
            "pt": self.partition,
        }

    @classmethod
    def from_json(cls, data: Any) -> SequenceState:
        if not data:
            return cls()
        parked = Parked(*data["p"]) if data.get("p") else None
        return cls(data.get("n"), parked, data.get("a", 0.0), data.get("pt"))


def sequence_table(app: Any, name: str, partitions: int) -> Any:
    """The changelog-backed Faust table: aggregate ID -> sequence state."""
    return changelog_table(app, name, partitions, "Per-aggregate next expected sequence and parking")
