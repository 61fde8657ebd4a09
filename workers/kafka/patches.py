"""Two narrow changes to faust-streaming's aiokafka driver (checked against 0.15.3).

* Fetch wait: Faust passes a fixed ``fetch_max_wait_ms=1500`` to aiokafka. A waiting fetch
  on the embedded broker is answered only when the wait expires, so the wait is the latency
  floor there (docs/embedded-broker.md): it becomes ``SEQGUARD_FETCH_MAX_WAIT_MS``.
* Changelog ends: table recovery reads each changelog up to the offset ListOffsets "latest"
  reports. The embedded broker reports the start of the partition's last record batch + 1,
  so Faust silently skipped the rest of that batch (29 of 200 keys wrong after a failover).
  Here the reported end is checked against the high-water mark a fetch returns, which is
  exact on every broker, and the larger one wins. On Apache Kafka the two agree; the check
  costs one short fetch per recovery.

Both read the app's ``Hooks`` (``workers.kafka.install`` attaches them); ``install`` here is
called from there, after the version check.

And one change to aiokafka's fetcher (checked against 0.14.0), for every consumer of the process:

* Header keys: aiokafka reads a record's header keys as strict UTF-8 while it unpacks a fetch
  (``_read_msg`` in aiokafka/record/_crecords/default_records.pyx and record/default_records.py).
  The protocol says String, but a producer can write any bytes, and such a key raised
  UnicodeDecodeError out of ``getmany``: Faust's fetcher crashed, the worker exited 1, and
  every restart met the same record again. Now a batch the fast reader refuses that way is
  read again by ``read_batch`` below, which decodes header keys with surrogateescape (the
  exact bytes come back with ``.encode("utf-8", "surrogateescape")``); the envelope decoder
  then dead-letters the record. The fast reader stays the path of every other batch.
* A batch that cannot be read at all (a codec missing, as snappy, lz4 and zstd without
  cramjam; corrupt compressed data) is not one record's content and cannot be dead-lettered:
  it is logged as critical, naming the partition and offsets, and the error stops the worker
  (Faust crashes, exit status 1) with the batch uncommitted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy, _DefaultRecordPy
from aiokafka.record.memory_records import _MemoryRecordsPy
from aiokafka.record.util import decode_varint
from faust.transport.drivers import aiokafka as faust_aiokafka

from workers.kafka import fetch_demand, hooks_of
from workers.kafka.clients import Target
from workers.kafka.read import read_to_end
from workers.records import InRecord

log = logging.getLogger(__name__)


def install() -> None:
    install_record_reader()
    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_seqguard_patched", False):
        return
    create_consumer = thread_cls._create_worker_consumer
    end_offsets = thread_cls._highwaters

    def create(self: Any, transport: Any) -> Any:
        consumer = create_consumer(self, transport)
        hooks = hooks_of(self.app)
        if hooks is not None and hooks.fetch_max_wait_ms is not None:
            consumer._fetch_max_wait_ms = hooks.fetch_max_wait_ms
        if hooks is not None and hooks.fetch_on_demand:
            fetch_demand.mark_on_start(consumer)
        return consumer

    async def highwaters(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
        reported = await end_offsets(self, partitions)
        hooks = hooks_of(self.app)
        if hooks is None or hooks.bootstrap is None or self.consumer.in_transaction:
            return reported
        fetched = await fetched_highwaters(hooks.bootstrap, reported)
        corrected = {tp: max(end, fetched.get(tp, end)) for tp, end in reported.items()}
        moved = {tp: (reported[tp], end) for tp, end in corrected.items() if end != reported[tp]}
        if moved:
            log.info("changelog ends corrected by a fetch (ListOffsets -> high-water mark): %s", moved)
        return corrected

    thread_cls._create_worker_consumer = create  # type: ignore[method-assign]
    thread_cls._highwaters = highwaters  # type: ignore[method-assign]
    thread_cls._seqguard_patched = True  # type: ignore[attr-defined]


async def fetched_highwaters(bootstrap: Target, ends: Mapping[Any, int], wait: float = 10.0) -> dict[Any, int]:
    """The high-water mark of each partition, as a fetch from just before ``ends`` reports it."""
    if not ends:
        return {}
    by_tp = {TopicPartition(tp.topic, tp.partition): tp for tp in ends}
    start = {ktp: max(0, (ends[tp] or 0) - 1) for ktp, tp in by_tp.items()}
    read = await read_to_end(bootstrap, start, quiet=wait, max_wait=wait, fetch_wait_ms=10)
    missing = sorted(str(ktp) for ktp in by_tp if ktp not in read.highwaters)
    if missing:
        log.warning("no fetch answer for %s: keeping ListOffsets' ends", missing)
    return {by_tp[ktp]: highwater for ktp, highwater in read.highwaters.items()}


# --------------------------------------------------------------------------- aiokafka's fetcher


def install_record_reader() -> None:
    """The fetcher unpacks fetches through ``_Records`` (header keys that are not UTF-8 read)."""
    if aiokafka_fetcher.MemoryRecords is _Records:
        return
    aiokafka_fetcher.MemoryRecords = _Records  # type: ignore[assignment,misc]
    aiokafka_fetcher.PartitionRecords = _PartitionRecords  # type: ignore[misc]


class _Records(_MemoryRecordsPy):  # type: ignore[misc]  # final only for typing
    """A fetch's record batches, each read by aiokafka's fast reader unless that one refuses it.

    aiokafka's own (Cython) MemoryRecords cannot be subclassed; its pure-Python one cuts the
    fetch into batches (per batch, not per record: the cost is small) and keeps each batch's bytes.
    """

    tp: Any = None  # set by _PartitionRecords, for the log

    def next_batch(self, *args: Any) -> Any:
        data = self._next_slice
        batch = super().next_batch()
        if data is None or not isinstance(batch, DefaultRecordBatch):
            return batch  # message formats v0 and v1 have no headers
        return _Batch(batch, data, self.tp)


#: Topics whose records the fetcher hands out as InRecords, not ConsumerRecords: the ordered
#: topics, whose records go to the batch delivery only (``workers.kafka.install`` adds them).
IN_RECORD_TOPICS: set[str] = set()


class _PartitionRecords(aiokafka_fetcher.PartitionRecords):  # type: ignore[misc]
    def __init__(self, tp: Any, records: Any, *args: Any) -> None:
        if isinstance(records, _Records):
            records.tp = tp
        super().__init__(tp, records, *args)
        if tp.topic in IN_RECORD_TOPICS and self._key_deserializer is None and self._value_deserializer is None:
            # One object per record instead of two (a ConsumerRecord, then the InRecord made from it).
            self._consumer_record = _in_record


def _in_record(tp: Any, record: Any) -> InRecord:
    return InRecord.of(tp.topic, tp.partition, record)


class _Batch:
    """One v2 record batch: aiokafka's reader, and ``read_batch`` once that one refuses a header key."""

    __slots__ = ("_batch", "_data", "_tp")

    def __init__(self, batch: Any, data: memoryview, tp: Any) -> None:
        self._batch, self._data, self._tp = batch, data, tp

    def __getattr__(self, name: str) -> Any:  # base_offset, validate_crc, is_control_batch...
        return getattr(self._batch, name)

    def __iter__(self) -> Iterator[Any]:
        # Read whole (a C-level list, not a generator step per record): a batch the fast reader
        # refuses part way is read again whole by read_batch, which gives the same records.
        try:
            return iter(list(self._batch))
        except UnicodeDecodeError as exc:
            log.warning("%s: a header key at offsets %s is not UTF-8 (%s): read with surrogateescape", *self._at(exc))
        except Exception as exc:
            self._unreadable(exc)
            raise
        try:
            return iter(list(read_batch(self._data)))
        except Exception as exc:
            self._unreadable(exc)
            raise

    def _unreadable(self, exc: Exception) -> None:
        log.critical(
            "%s: the record batch at offsets %s cannot be read (%r). It is not one record's content, so it "
            "cannot be dead-lettered: the worker stops with it uncommitted. Install its codec (snappy, lz4 "
            "and zstd need cramjam) or move the group's offset past it.",
            *self._at(exc),
        )

    def _at(self, exc: BaseException) -> tuple[Any, str, BaseException]:
        batch = self._batch
        return self._tp, f"{batch.base_offset}..{batch.next_offset - 1}", exc


def read_batch(data: bytes | bytearray | memoryview) -> Iterator[Any]:
    """The records of one v2 record batch as aiokafka's readers make them, except that header
    keys are decoded with surrogateescape instead of raising on bytes that are not UTF-8."""
    batch = _DefaultRecordBatchPy(data)
    batch._maybe_uncompress()
    buf, pos = batch._buffer, batch._pos
    log_append = batch.timestamp_type == batch.LOG_APPEND_TIME
    for _ in range(batch._num_records):
        length, pos = decode_varint(buf, pos)
        end = pos + length
        _, pos = decode_varint(buf, pos)  # attributes: unused
        ts_delta, pos = decode_varint(buf, pos)
        offset_delta, pos = decode_varint(buf, pos)
        key, pos = _nullable_bytes(buf, pos)
        value, pos = _nullable_bytes(buf, pos)
        count, pos = decode_varint(buf, pos)
        headers: list[tuple[str, bytes | None]] = []
        for _ in range(count):
            name, pos = _nullable_bytes(buf, pos)
            header_value, pos = _nullable_bytes(buf, pos)
            headers.append(((name or b"").decode("utf-8", "surrogateescape"), header_value))
        if pos != end or count < 0:
            raise CorruptRecordException(f"invalid record at offset {batch.base_offset + offset_delta}")
        timestamp = batch.max_timestamp if log_append else batch.first_timestamp + ts_delta
        yield _DefaultRecordPy(batch.base_offset + offset_delta, timestamp, batch.timestamp_type, key, value, headers)


def _nullable_bytes(buf: bytearray, pos: int) -> tuple[bytes | None, int]:
    size, pos = decode_varint(buf, pos)
    if size < 0:
        return None, pos
    if pos + size > len(buf):
        raise CorruptRecordException("a record field runs past the end of its batch")
    return bytes(buf[pos : pos + size]), pos + size
