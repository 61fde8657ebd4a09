"""SEQGUARD_STORE=rocksdb: the state table in Faust's RocksDB store, checkpointed, never ahead
of the changelog.

Faust's store (faust/stores/rocksdb.py, checked against faust-streaming 0.15.3) keeps one
rocksdict database per changelog partition (``_db_for_partition``, ``_dbs``) and, under
``offset_key``, the offset of the last changelog record the database holds. Recovery reads
the changelog from that offset on, so a restarted worker reads only what was written since.

The rule that keeps "nothing lost, nothing doubled": local state never runs ahead of the
changelog. Were a batch's records written to RocksDB before its changelog records were
acknowledged, a SIGKILL in between would leave state recording events as applied whose
input offsets were never committed: read again, they would be skipped as duplicates and
their output lost. So a batch's writes are staged in memory (reads see them), and only
``settle`` (after the Sink's flush was acknowledged) writes them, per partition in one
WriteBatch with the offset of the partition's last changelog record: the values and the
offset land together or not at all, and the offset never gets ahead of the values.
``rollback`` drops the staged writes. Faust's own writes (recovery, standbys) go through
``apply_changelog_batch``: values first, then the offset, which is safe the same way.

No database handle is kept here: Faust closes a partition's database when the partition
moves away by dropping the last reference to it, and reopens it (LOCK file) when it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from rocksdict import WriteBatch

from workers.errors import CriticalError


class RocksBackend:
    """Faust's RocksDB store, with a batch's writes staged until its changelog records are in."""

    def __init__(self, store: Any, acked: Callable[[], Mapping[int, int]]) -> None:
        if not store.use_rocksdict:
            raise RuntimeError("Faust opened the RocksDB store with python-rocksdb; seqguard writes rocksdict batches")
        self.store = store
        #: Partition -> offset of the last changelog record of the flush just acknowledged (Sink).
        self.acked = acked
        #: partition -> key -> record (None: deleted), written since the last settle.
        self._staged: dict[int, dict[bytes, bytes | None]] = {}

    def _db(self, partition: int) -> Any:
        return self.store._db_for_partition(partition)  # opens it if Faust has not yet

    def get(self, key: bytes, partition: int) -> bytes | None:
        if key == self.store.offset_key:
            # A record keyed so would overwrite the checkpoint. envelope.py does not refuse it yet.
            raise CriticalError(f"aggregate ID {key!r} is the key Faust's RocksDB store keeps its offset under")
        return self._read(key, partition)

    def _read(self, key: bytes, partition: int) -> bytes | None:
        staged = self._staged.get(partition)
        if staged is not None and key in staged:
            return staged[key]
        raw: bytes | None = self._db(partition).get(key)
        return raw

    def put(self, key: bytes, partition: int, raw: bytes | None) -> None:
        self._staged.setdefault(partition, {})[key] = raw

    def settle(self) -> None:
        offsets = self.acked()
        offset_key = self.store.offset_key
        for partition, writes in self._staged.items():
            batch = WriteBatch(raw_mode=True)
            for key, raw in writes.items():
                if raw is None:
                    batch.delete(key)
                else:
                    batch.put(key, raw)
            offset = offsets.get(partition)
            if offset is not None:  # without it the values are still right: recovery re-reads more
                batch.put(offset_key, str(offset).encode())  # Faust's format (set_persisted_offset)
            self._db(partition).write(batch)
        self._staged.clear()

    def rollback(self) -> None:
        self._staged.clear()

    def keys(self, partitions: Collection[int]) -> list[tuple[bytes, int]]:
        offset_key, out = self.store.offset_key, list[tuple[bytes, int]]()
        for partition in partitions:
            staged = self._staged.get(partition, {})
            stored = self._db(partition).keys()  # Rdict is no dict: keys() is its key iterator
            out.extend((k, partition) for k in stored if k != offset_key and k not in staged)
            out.extend((k, partition) for k, raw in staged.items() if raw is not None)
        return out

    def holds(self, key: bytes, partition: int) -> bool:
        return key != self.store.offset_key and self._read(key, partition) is not None

    def partition_holding(self, key: bytes, partitions: Collection[int]) -> int | None:
        return next((p for p in sorted(partitions) if self.holds(key, p)), None)
