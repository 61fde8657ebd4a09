"""The state table's store behind one interface, and the Faust settings that choose it.

``SEQGUARD_STORE=memory`` is Faust's ``memory://`` store: a dict and its key -> changelog
partition map (``_key_partition``), rebuilt from the whole changelog at every start.
``rocksdb`` is Faust's ``rocksdb://`` store through rocksdict: one database per changelog
partition on local disk with the changelog offset it holds, so a restart reads only the
changelog written since (workers/kafka/rocks.py). StateStore (workers/processor/store.py)
reads and writes either through a ``StateBackend``; both keep a batch's writes undoable
until its changelog records were acknowledged (``settle``), and never let local state run
ahead of the changelog.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from workers.errors import StartupError

if TYPE_CHECKING:
    from workers.settings import Settings


class StateBackend(Protocol):
    def get(self, key: bytes, partition: int) -> bytes | None:
        """The record as the current batch sees it: its own writes first."""

    def put(self, key: bytes, partition: int, raw: bytes | None) -> None:
        """Write (None: delete) the record; undoable until ``settle``."""

    def settle(self) -> None:
        """The writes since the last settle are in the changelog, acknowledged: keep them."""

    def rollback(self) -> None:
        """Drop the writes since the last settle (their batch never reached the changelog)."""

    def keys(self, partitions: Collection[int]) -> list[tuple[bytes, int]]:
        """Every key held for the given changelog partitions, with its partition."""

    def holds(self, key: bytes, partition: int) -> bool:
        """Whether ``key`` has a record on ``partition``."""

    def partition_holding(self, key: bytes, partitions: Collection[int]) -> int | None:
        """The one of ``partitions`` that holds a record of ``key``, if any."""


class MemoryBackend:
    """Faust's memory store: writes go to its dict at once, journaled until settled."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.partitions: MutableMapping[bytes, int] = key_partitions(data)
        #: key -> (record, partition) before the batch's first write of it, until settled.
        self._undo: dict[bytes, tuple[bytes | None, int | None]] = {}

    def get(self, key: bytes, partition: int) -> bytes | None:
        raw: bytes | None = self.data.data.get(key)  # the store's dict: its Mapping.get is Python code
        return raw

    def put(self, key: bytes, partition: int, raw: bytes | None) -> None:
        data, partitions = self.data.data, self.partitions  # the dict behind Faust's FastUserDict
        if key not in self._undo:
            self._undo[key] = (data.get(key), partitions.get(key))
        if raw is None:
            data.pop(key, None)
        else:
            data[key] = raw
        partitions[key] = partition  # Faust forgets the key when its partition moves

    def settle(self) -> None:
        self._undo.clear()

    def rollback(self) -> None:
        data, partitions = self.data, self.partitions
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

    def keys(self, partitions: Collection[int]) -> list[tuple[bytes, int]]:
        data = self.data
        return [(k, p) for k, p in list(self.partitions.items()) if p in partitions and k in data]

    def holds(self, key: bytes, partition: int) -> bool:
        return key in self.data and self.partitions.get(key, partition) == partition

    def partition_holding(self, key: bytes, partitions: Collection[int]) -> int | None:
        partition = self.partitions.get(key)
        return partition if partition is not None and key in self.data and partition in partitions else None


def key_partitions(data: Any) -> MutableMapping[bytes, int]:
    """Key -> changelog partition, as Faust's memory store keeps it (``_key_partition``).

    The store fills it while it recovers the changelog and drops a partition's keys when
    the partition moves away; seqguard sets it for the keys it writes itself.
    """
    mapping: MutableMapping[bytes, int] = data._key_partition
    return mapping


def backend_for(table: Any, acked: Callable[[], Mapping[int, int]]) -> StateBackend:
    """The backend of the table's Faust store. ``acked``: partition -> offset of the last
    changelog record the flush just acknowledged (the RocksDB checkpoint)."""
    data = table.data
    if hasattr(data, "_key_partition"):
        return MemoryBackend(data)
    from workers.kafka.rocks import RocksBackend

    return RocksBackend(data, acked)


# --------------------------------------------------------------------------- Faust settings


def faust_store(settings: Settings) -> str:
    """Faust's ``store`` URL; StartupError (exit 2) if rocksdb is chosen but rocksdict is missing."""
    if settings.store == "memory":
        return "memory://"
    try:
        import rocksdict  # noqa: F401 - Faust picks rocksdict (not python-rocksdb) only when it imports
    except ImportError as exc:
        raise StartupError(
            f"SEQGUARD_STORE=rocksdb needs rocksdict ({exc}): pip install 'faust-streaming[rocksdict]'"
        ) from exc
    return "rocksdb://"


def faust_datadir(settings: Settings) -> Path:
    """Faust's data directory: with RocksDB one per app and worker, the same across restarts.

    Workers on one host must not share a RocksDB directory (its LOCK file refuses a second
    opener), and a restarted worker must find its own checkpoint again: the directory is named
    after SEQGUARD_WORKER_ID, else after the web port (each worker of a host has its own). The
    app ID comes first: another app's checkpoint holds offsets of another changelog.
    """
    if settings.store == "memory":
        return settings.data_dir
    return settings.data_dir / _safe(settings.app_id) / worker_dir_name(settings.worker_id, settings.web_port)


def worker_dir_name(worker_id: str, web_port: int) -> str:
    """``id-w1`` for SEQGUARD_WORKER_ID ``w1``, ``port-6066`` without one."""
    return "id-" + _safe(worker_id) if worker_id else f"port-{web_port}"


def _safe(name: str) -> str:
    """A file name: characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``,
    and a name of dots only (``..``) gets one in front."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return "_" + name if not name.strip(".") else name
