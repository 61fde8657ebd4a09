"""The reorder buffer: events that arrived ahead of their aggregate's next sequence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tables.changelog import changelog_table


@dataclass(slots=True)
class Buffered:
    """One held event. ``record`` is the binding's opaque, JSON-able copy of the input."""

    seq: int
    key: str  # idempotency key (source + id)
    type: str
    at: float  # when it was buffered: starts the gap clock
    record: Any = None
    #: True for an event already applied on arrival (``unordered`` policy): it only
    #: marks its sequence number as used, so the sequence can step over it.
    done: bool = False

    def to_json(self) -> list[Any]:
        return [self.seq, self.key, self.type, self.at, self.record, self.done]

    @classmethod
    def from_json(cls, data: list[Any]) -> Buffered:
        seq, key, type_, at, record, done = data
        return cls(seq, key, type_, at, record, done)


class ReorderBuffer:
    """Sequence number -> Buffered, for one aggregate."""

    __slots__ = ("items",)

    def __init__(self, items: dict[int, Buffered] | None = None) -> None:
        self.items: dict[int, Buffered] = items if items is not None else {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, seq: int) -> bool:
        return seq in self.items

    def get(self, seq: int) -> Buffered | None:
        return self.items.get(seq)

    def put(self, entry: Buffered) -> None:
        self.items[entry.seq] = entry

    def pop(self, seq: int) -> Buffered | None:
        return self.items.pop(seq, None)

    def lowest(self) -> Buffered | None:
        return self.items[min(self.items)] if self.items else None

    def oldest_at(self) -> float | None:
        return min((b.at for b in self.items.values() if not b.done), default=None)

    def drop_below(self, seq: int) -> list[Buffered]:
        gone = [b for s, b in self.items.items() if s < seq]
        for b in gone:
            del self.items[b.seq]
        return gone

    def to_json(self) -> list[list[Any]]:
        return [b.to_json() for b in self.items.values()]

    @classmethod
    def from_json(cls, data: Any) -> ReorderBuffer:
        entries = (Buffered.from_json(item) for item in data or ())
        return cls({b.seq: b for b in entries})


def reorder_table(app: Any, name: str, partitions: int) -> Any:
    """The changelog-backed Faust table: aggregate ID -> buffered events."""
    return changelog_table(app, name, partitions, "Per-aggregate reorder buffer (events held for an earlier sequence)")
