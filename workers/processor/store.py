"""Aggregate state in its changelog-backed Faust table: one record per aggregate, written once per batch.

Faust's ``table[k] = v`` writes one changelog record per call and cannot be used from a
batch (faust-streaming 0.15.3 refuses table writes inside ``take``). So the store writes
the table's storage itself and adds the changelog record to the batch's Sink:
one record per changed aggregate per batch. The Sink sends state last, after the
batch's output, and the offsets are acknowledged only after everything was acked.

The table's store is Faust's memory store or its RocksDB store (SEQGUARD_STORE), behind
one StateBackend (workers/kafka/tables.py). A batch's writes are undoable until the Sink's
flush succeeded (``settle``): a batch the write fence dropped leaves every record as it was
(``rollback``), so local state never runs ahead of the changelog. The memory store journals
its writes; the RocksDB store stages them and writes them at ``settle``, with the changelog
offset it holds then (workers/kafka/rocks.py).

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
from workers.kafka.tables import StateBackend, backend_for

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
    backend: StateBackend = field(init=False)
    #: Aggregates kept decoded between batches (most recently used last): key -> (the record
    #: it was saved as, the Aggregate). Decoding a record is most of a batch's state cost.
    cache_size: int = 20_000
    _decoded: dict[bytes, tuple[bytes, Aggregate]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.backend = backend_for(self.table, self._acked_offsets)

    def _acked_offsets(self) -> dict[int, int]:
        topic = self.changelog_topic
        return {partition: offset for (t, partition), offset in self.sink.state_offsets.items() if t == topic}

    @property
    def changelog_topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    def load(self, key: bytes, partition: int) -> Loaded:
        """The aggregate as its record holds it. A cached one is taken out of the cache (the
        caller changes it in place), and comes back only by ``save``, as what it was saved as:
        an aggregate whose batch was dropped is decoded again from the record."""
        raw = self.backend.get(key, partition)
        cached = self._decoded.pop(key, None)
        if cached is not None and raw is not None and cached[0] == raw:
            return Loaded(key, cached[1], raw, partition)
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
        self._keep(key, raw, agg)
        if raw == loaded.before:
            return False
        if raw is not None and len(raw) > self.max_record_bytes:
            # The core keeps every record under the limit (tables.sequencer); past it the broker
            # would refuse the batch and stop the worker. Never expected: say so loudly.
            log.error("state record of %r is %d bytes, over the %d limit", key, len(raw), self.max_record_bytes)
        self.backend.put(key, partition, raw)
        self.sink.add(self.changelog_topic, partition, key, raw, None, ())
        loaded.before = raw
        return True

    def settle(self) -> None:
        """The batch's records are in the changelog, acknowledged: its writes stay."""
        self.backend.settle()

    def rollback(self) -> None:
        """Undo every write since the last ``settle`` (the batch was not flushed)."""
        self.backend.rollback()
        active, self._indexed_for = self._indexed_for, None  # the held index counted the dropped writes
        if active is not None:
            self.reindex(active)

    def holds(self, key: bytes, partition: int) -> bool:
        """Whether this worker has a record of ``key`` on ``partition``."""
        return self.backend.holds(key, partition)

    def partition_holding(self, key: bytes, partitions: set[int] | frozenset[int]) -> int | None:
        """The one of ``partitions`` this worker holds ``key``'s record on, if any."""
        return self.backend.partition_holding(key, partitions)

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
        yield from self.backend.keys(partitions)

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
            self._keep(key, loaded.before, loaded.agg)  # unchanged: still what its record says
        self._indexed_for = active

    def _keep(self, key: bytes, raw: bytes | None, agg: Aggregate) -> None:
        if raw is not None and self.cache_size:
            self._decoded[key] = (raw, agg)
            if len(self._decoded) > self.cache_size:
                del self._decoded[next(iter(self._decoded))]  # the least recently used
