"""The reorder buffer: events that arrived ahead of their aggregate's next sequence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: A buffered input record exactly as read from Kafka: topic, partition, offset,
#: timestamp (s), key, value, headers. Kept verbatim (bytes), so releasing it needs no re-encoding.
RawRecord = tuple[str, int, int, float | None, bytes | None, bytes | None, list[tuple[str, bytes | None]]]

#: Upper bound of an entry's encoded size beyond its variable-length fields (MessagePack:
#: array headers, ints and floats at their widest, str/bin headers).
ENTRY_OVERHEAD = 96
HEADER_OVERHEAD = 11


def record_bytes(record: RawRecord | None) -> int:
    """Upper bound of a raw record's encoded size inside the state record."""
    if record is None:
        return 1
    topic, _p, _o, _ts, key, value, headers = record
    size = len(topic.encode()) + len(key or b"") + len(value or b"")
    return size + sum(HEADER_OVERHEAD + len(k.encode()) + len(v or b"") for k, v in headers)


@dataclass(slots=True)
class Buffered:
    """One held event and, unless it is a ``done`` placeholder, its input record."""

    seq: int
    key: str  # idempotency key (source + id)
    type: str
    at: float  # when its wait began, on its partition's gap clock (tables.clock)
    record: RawRecord | None = None
    #: True for an event already applied on arrival (``unordered`` policy): it only
    #: marks its sequence number as used, so the sequence can step over it.
    done: bool = False

    @property
    def nbytes(self) -> int:
        return ENTRY_OVERHEAD + len(self.key.encode()) + len(self.type.encode()) + record_bytes(self.record)


class ReorderBuffer:
    """Sequence number -> Buffered for one aggregate, and the entries' encoded size."""

    __slots__ = ("items", "nbytes")

    def __init__(self, items: dict[int, Buffered] | None = None) -> None:
        self.items: dict[int, Buffered] = items if items is not None else {}
        self.nbytes = sum(b.nbytes for b in self.items.values())

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, seq: int) -> bool:
        return seq in self.items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReorderBuffer) and self.items == other.items

    def __repr__(self) -> str:
        return f"ReorderBuffer({self.items!r})"

    def get(self, seq: int) -> Buffered | None:
        return self.items.get(seq)

    def put(self, entry: Buffered) -> None:
        old = self.items.get(entry.seq)
        if old is not None:
            self.nbytes -= old.nbytes
        self.items[entry.seq] = entry
        self.nbytes += entry.nbytes

    def pop(self, seq: int) -> Buffered | None:
        entry = self.items.pop(seq, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
        return entry

    def lowest(self) -> Buffered | None:
        return self.items[min(self.items)] if self.items else None

    def oldest_at(self) -> float | None:
        return min((b.at for b in self.items.values() if not b.done), default=None)

    def restart_waits(self, at: float) -> None:
        """The sequence moved on at ``at``: what still waits, waits for the gap now open, and
        that gap's timeout starts no earlier than ``at`` (each gap gets its own timeout: an
        aggregate that waited long for 1 and then got 1..4 does not skip 5 at once)."""
        for entry in self.items.values():
            if not entry.done and entry.at < at:
                entry.at = at

    def waiting(self) -> int:
        """Entries that wait to be applied (``done`` placeholders do not)."""
        if not self.items:
            return 0
        return sum(1 for b in self.items.values() if not b.done)

    def drop_below(self, seq: int) -> list[Buffered]:
        gone = [b for s, b in self.items.items() if s < seq]
        for b in gone:
            self.pop(b.seq)
        return gone


def as_raw(data: Any) -> RawRecord:
    """A decoded record (lists from the codec) as a RawRecord tuple."""
    topic, partition, offset, ts, key, value, headers = data
    return (topic, partition, offset, ts, key, value, [(k, v) for k, v in headers])
