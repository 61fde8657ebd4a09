"""Aggregate state in its changelog-backed Faust table: one record per aggregate, written once per batch.

Faust's ``table[k] = v`` writes one changelog record per call and cannot be used from a
batch (faust-streaming 0.15.3 refuses table writes inside ``take``). So the store writes
the table's in-memory data itself and adds the changelog record to the batch's Sink:
one record per changed aggregate per batch. The Sink sends state last, after the
batch's output, and the offsets are acknowledged only after everything was acked.

Writes to the in-memory table are journaled until the Sink's flush succeeded
(``settle``): a batch the write fence dropped puts every record back as it was
(``rollback``), so memory never runs ahead of the changelog.

It also keeps an index of the aggregates that hold something (buffered events, or
parked), derived from the table, so the sweep does not scan every key.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tables.state import Aggregate, StateRecordError, decode, encode
from workers.errors import CriticalError
from workers.kafka.sink import Sink
from workers.kafka.tables import key_partitions

log = logging.getLogger(__name__)


def state_view(raw: bytes | None) -> dict[str, Any] | None:
    """A state record as JSON for people and tests (/tables): buffered records by their place."""
    if raw is None:
        return None
    agg = decode(raw)
    s = agg.seq
    buffer = [
        [b.seq, b.key, b.type, b.at, b.done, None if b.record is None else list(b.record[:3])]
        for b in agg.buffer.items.values()
    ]
    parked = None if s.parked is None else [s.parked.seq, s.parked.reason, s.parked.since]
    return {"n": s.next_seq, "p": parked, "a": s.last_active, "seen": agg.seen.ids, "buffer": buffer}


@dataclass(slots=True)
class Loaded:
    """An aggregate being changed by a batch or sweep, with its record as last written."""

    key: bytes
    agg: Aggregate
    before: bytes | None
    partition: int


@dataclass
class StateStore:
    table: Any  # the faust Table (tables.changelog.state_table)
    sink: Sink
    max_record_bytes: int = 900_000
    #: Aggregates that hold buffered events or are parked: key -> partition.
    held: dict[bytes, int] = field(default_factory=dict)
    #: Buffered events waiting, per source partition (for the per-partition limit and gauges).
    waiting: Counter[int] = field(default_factory=Counter)
    _waiting_of: dict[bytes, int] = field(default_factory=dict)
    _indexed_for: frozenset[int] | None = None
    #: key -> (record, partition) before the batch's first write of it, until settled.
    _undo: dict[bytes, tuple[bytes | None, int | None]] = field(default_factory=dict)

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def load(self, key: bytes, partition: int) -> Loaded:
        raw = self.table.data.get(key)
        try:
            agg = decode(raw)
        except StateRecordError as exc:
            # Only seqguard writes this changelog: an unreadable record means another version
            # or another program wrote it. Stop rather than guess and lose state.
            raise CriticalError(f"state of aggregate {key!r}: {exc}") from exc
        return Loaded(key, agg, raw, partition)

    def save(self, loaded: Loaded, *, forget: bool = False) -> bool:
        """Write the aggregate if its record changed; ``forget`` deletes it. True if written."""
        key, agg, partition = loaded.key, loaded.agg, loaded.partition
        raw = None if forget else encode(agg)
        self._index(key, agg, partition, forget)
        if raw == loaded.before:
            return False
        if raw is not None and len(raw) > self.max_record_bytes:
            # The core keeps every record under the limit (tables.sequencer); past it the broker
            # would refuse the batch and stop the worker. Never expected: say so loudly.
            log.error("state record of %r is %d bytes, over the %d limit", key, len(raw), self.max_record_bytes)
        data = self.table.data
        partitions = key_partitions(self.table)
        if key not in self._undo:
            self._undo[key] = (data.get(key), partitions.get(key))
        if raw is None:
            data.pop(key, None)
        else:
            data[key] = raw
        partitions[key] = partition  # Faust forgets the key when its partition moves
        self.sink.add(self.changelog_topic, partition, key, raw, None, ())
        loaded.before = raw
        return True

    def settle(self) -> None:
        """The batch's records are in the changelog: nothing to undo any more."""
        self._undo.clear()

    def rollback(self) -> None:
        """Put back every record written since the last ``settle`` (the batch was not flushed)."""
        data, partitions = self.table.data, key_partitions(self.table)
        for key, (raw, partition) in self._undo.items():
            if raw is None:
                data.pop(key, None)
            else:
                data[key] = raw
            if partition is None:
                partitions.pop(key, None)
            else:
                partitions[key] = partition
        self._undo.clear()
        active, self._indexed_for = self._indexed_for, None  # the held index counted the dropped writes
        if active is not None:
            self.reindex(active)

    def _index(self, key: bytes, agg: Aggregate, partition: int, forget: bool) -> None:
        waiting = 0 if forget else agg.buffer.waiting()
        self.waiting[partition] += waiting - self._waiting_of.pop(key, 0)
        if waiting:
            self._waiting_of[key] = waiting
        if not forget and (len(agg.buffer) or agg.seq.parked is not None):
            self.held[key] = partition
        else:
            self.held.pop(key, None)

    def keys(self, partitions: set[int] | frozenset[int]) -> Iterator[tuple[bytes, int]]:
        """Aggregate keys this worker holds for the given source partitions."""
        for key, partition in list(key_partitions(self.table).items()):
            if partition in partitions and key in self.table.data:
                yield key, partition

    def reindex(self, active: set[int] | frozenset[int]) -> None:
        """Rebuild the held index when the assignment changed (tables recovered or moved)."""
        active = frozenset(active)
        if self._indexed_for == active:
            return
        self.held.clear()
        self.waiting.clear()
        self._waiting_of.clear()
        for key, partition in self.keys(active):
            loaded = self.load(key, partition)
            self._index(key, loaded.agg, partition, forget=False)
        self._indexed_for = active
