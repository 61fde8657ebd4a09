"""Aggregate state in the three changelog-backed Faust tables, written once per batch.

Faust's ``table[k] = v`` writes one changelog record per call and cannot be used from a
batch (faust-streaming 0.15.3 refuses table writes inside ``take``). So the store writes
the tables' in-memory data itself and adds their changelog records to the batch's Sink:
one record per changed aggregate per table per batch. The worker flushes the Sink (and
so the changelogs) before it acknowledges the batch's offsets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tables.reorder import ReorderBuffer
from tables.seen import SeenIds
from tables.sequence import SequenceState
from tables.sequencer import Aggregate
from workers.envelope import MAX_ATTRIBUTE_CHARS
from workers.sink import Sink

#: An idempotency key is source + separator + id.
MAX_KEY_CHARS = 2 * MAX_ATTRIBUTE_CHARS + 1


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(slots=True)
class Snapshot:
    """The serialized parts of an aggregate as last written, to send only what changed."""

    seq: Any = None
    buffer: Any = None
    seen: Any = None


@dataclass
class TableStore:
    sequence: Any  # faust Table
    seen: Any
    reorder: Any
    sink: Sink
    max_record_bytes: int = 900_000

    def load(self, key: bytes) -> tuple[Aggregate, Snapshot]:
        seq_raw = self.sequence.data.get(key)
        buf_raw = self.reorder.data.get(key)
        seen_raw = self.seen.data.get(key)
        agg = Aggregate(
            SequenceState.from_json(seq_raw),
            ReorderBuffer.from_json(buf_raw["b"] if buf_raw else None),
            SeenIds.from_json(seen_raw),
        )
        return agg, Snapshot(seq_raw, buf_raw, seen_raw)

    def save(self, key: bytes, agg: Aggregate, partition: int, before: Snapshot, *, forget: bool = False) -> None:
        """Write the parts of ``agg`` that differ from ``before``; ``forget`` deletes them all."""
        agg.seq.partition = partition
        if len(agg.seen) * (MAX_KEY_CHARS + 32) > self.max_record_bytes:
            agg.seen.trim_to_bytes(self.max_record_bytes)  # a dedupe window, not a ledger
        seq = None if forget else agg.seq.to_json()
        buf = None if forget or not len(agg.buffer) else {"pt": partition, "b": agg.buffer.to_json()}
        seen = None if forget or not len(agg.seen) else dict(agg.seen.to_json())
        for table, old, new in (
            (self.sequence, before.seq, seq),
            (self.reorder, before.buffer, buf),
            (self.seen, before.seen, seen),
        ):
            if new != old:
                self._write(table, key, new, partition)

    def _write(self, table: Any, key: bytes, value: Any, partition: int) -> None:
        data = table.data
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        # Let Faust's memory store forget this key when its partition moves away.
        key_partition = getattr(data, "_key_partition", None)
        if key_partition is not None:
            key_partition[key] = partition
        raw = None if value is None else _dumps(value)
        self.sink.add(table.changelog_topic.get_topic_name(), partition, key, raw, None, ())

    def keys(self, partitions: set[int]) -> Iterator[tuple[bytes, int]]:
        """Aggregate keys this worker holds for the given source partitions."""
        for key, value in list(self.sequence.data.items()):
            partition = value.get("pt") if isinstance(value, dict) else None
            if partition in partitions:
                yield key, partition
