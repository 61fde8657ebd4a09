"""One aggregate's whole state, and its one changelog record.

Sequence, parking, seen IDs and the reorder buffer live in ONE record per aggregate:
Kafka appends a record atomically, so a crash leaves the old version or the new one,
never "seen written, sequence not". The encoding is MessagePack (msgspec): binary-safe
for the raw input records a buffer keeps, and the smallest and fastest of the encodings
measured by ``python -m benchmarks.state_encoding``.

Layout (an array, version first so a later layout can be told apart):
``[1, next_seq, parked | nil, last_active, seen {key: at}, buffer [[seq, key, type, at, done, record]]]``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from tables.reorder import Buffered, ReorderBuffer, as_raw
from tables.seen import SeenIds
from tables.sequence import Parked, SequenceState

VERSION = 1
#: Upper bound of the encoded record beyond the seen and buffer entries.
FIXED_BYTES = 128

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class StateRecordError(ValueError):
    """A changelog value that is not a state record this version can read."""


@dataclass(slots=True)
class Aggregate:
    """All state of one aggregate: one changelog record."""

    seq: SequenceState = field(default_factory=SequenceState)
    buffer: ReorderBuffer = field(default_factory=ReorderBuffer)
    seen: SeenIds = field(default_factory=SeenIds)

    @property
    def nbytes(self) -> int:
        """Upper bound of the encoded record's size."""
        return FIXED_BYTES + self.seen.nbytes + self.buffer.nbytes


def encode(agg: Aggregate) -> bytes:
    s = agg.seq
    parked = None if s.parked is None else (s.parked.seq, s.parked.reason, s.parked.since)
    buffer = [(b.seq, b.key, b.type, b.at, b.done, b.record) for b in agg.buffer.items.values()]
    return _encoder.encode((VERSION, s.next_seq, parked, s.last_active, agg.seen.ids, buffer))


def decode(raw: bytes | None) -> Aggregate:
    """The aggregate a changelog value holds; a fresh one for None (no record, or a tombstone)."""
    if raw is None:
        return Aggregate()
    try:
        version, next_seq, parked, last_active, seen, buffer = _decoder.decode(raw)
    except (msgspec.DecodeError, ValueError, TypeError) as exc:
        raise StateRecordError(f"not a state record: {exc}") from exc
    if version != VERSION:
        raise StateRecordError(f"state record version {version!r}, this worker reads {VERSION}")
    entries = (_entry(item) for item in buffer)
    return Aggregate(
        SequenceState(next_seq, None if parked is None else Parked(*parked), last_active),
        ReorderBuffer({b.seq: b for b in entries}),
        SeenIds(seen),
    )


def _entry(item: Any) -> Buffered:
    seq, key, type_, at, done, record = item
    return Buffered(seq, key, type_, at, None if record is None else as_raw(record), done)
