"""Aggregate state in the three changelog-backed Faust tables, written once per batch.

Faust's ``table[k] = v`` writes one changelog record per call and cannot be used from a
batch (faust-streaming 0.15.3 refuses table writes inside ``take``). So the store writes
the tables' in-memory data itself and produces their changelog records directly, one
record per changed aggregate per table per batch, and the worker flushes them before it
acknowledges the batch's offsets.

Sealing: the embedded broker answers ListOffsets "latest" with the start of the last
record batch + 1, and Faust stops restoring a table there, dropping the rest of that
batch (shared/EMBEDDED-BROKER.md, trap 1). Ending every flush with a one-record batch
per changelog partition (the partition's last record, sent again alone) makes that
answer exact. On Apache Kafka this costs one duplicate record per partition per batch,
which compaction removes; set SEQGUARD_SEAL_CHANGELOG_BATCHES=false there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tables.reorder import ReorderBuffer
from tables.seen import SeenIds
from tables.sequence import SequenceState
from tables.sequencer import Aggregate


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
    producer: Any  # faust Producer
    seal: bool = True
    _pending: list[Any] = field(default_factory=list)
    _last: dict[tuple[str, int], tuple[bytes, bytes | None]] = field(default_factory=dict)

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

    async def save(self, key: bytes, agg: Aggregate, partition: int, before: Snapshot, *, forget: bool = False) -> None:
        """Write the parts of ``agg`` that differ from ``before``; ``forget`` deletes them all."""
        agg.seq.partition = partition
        seq = None if forget else agg.seq.to_json()
        buf = None if forget or not len(agg.buffer) else {"pt": partition, "b": agg.buffer.to_json()}
        seen = None if forget or not len(agg.seen) else dict(agg.seen.to_json())
        for table, old, new in (
            (self.sequence, before.seq, seq),
            (self.reorder, before.buffer, buf),
            (self.seen, before.seen, seen),
        ):
            if new != old:
                await self._write(table, key, new, partition)

    async def _write(self, table: Any, key: bytes, value: Any, partition: int) -> None:
        data = table.data
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        # Let Faust's memory store forget this key when its partition moves away.
        key_partition = getattr(data, "_key_partition", None)
        if key_partition is not None:
            key_partition[key] = partition
        topic = table.changelog_topic.get_topic_name()
        raw = None if value is None else _dumps(value)
        self._pending.append(await self.producer.send(topic, key, raw, partition, None, None))
        self._last[(topic, partition)] = (key, raw)

    async def flush(self) -> None:
        """Wait until every changelog record of this batch is acknowledged (raises if one failed)."""
        if not self._pending and not self._last:
            return
        await self.producer.flush()
        pending, self._pending = self._pending, []
        for fut in pending:
            await fut  # raises the produce error, if any
        if self.seal and self._last:
            seals = [
                await self.producer.send(topic, key, raw, partition, None, None)
                for (topic, partition), (key, raw) in self._last.items()
            ]
            await self.producer.flush()
            for fut in seals:
                await fut
        self._last.clear()

    def keys(self, partitions: set[int]) -> Iterator[tuple[bytes, int]]:
        """Aggregate keys this worker holds for the given source partitions."""
        for key, value in list(self.sequence.data.items()):
            partition = value.get("pt") if isinstance(value, dict) else None
            if partition in partitions:
                yield key, partition
