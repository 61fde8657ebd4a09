"""Compressed input: every Kafka codec is read, and a batch the worker cannot decompress stops it loudly.

gzip is in the standard library; aiokafka 0.14 reads snappy, lz4 and zstd with ``cramjam``
(aiokafka/codec.py), a runtime dependency of seqguard. The embedded broker accepts all four
(docs/embedded-broker.md). Each batch is checked to be compressed on the wire: aiokafka sends
a batch uncompressed when compressing would not make it smaller.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder, _DefaultRecordBatchBuilderPy

from tests.harness import Deployment, Worker, consume_all, event, sequences_by_aggregate

#: Kafka's codec ids (the low three bits of a record batch's attributes).
CODECS = {"gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
SHUFFLED = [3, 1, 2, 5, 4]


def shuffled_events(prefix: str, aggregates: int = 2) -> list:
    """Each aggregate's sequence 1..5, sent as 3, 1, 2, 5, 4; data that compresses well."""
    return [event(f"{prefix}-{a}", s, "note", {"pad": "compressible " * 20}) for s in SHUFFLED for a in range(aggregates)]


async def send_compressed(bootstrap: str, topic: str, records: list, codec: str) -> list[int]:
    """Each partition's records in one record batch built by the producer with ``codec``; returns
    the codec id each batch had on the wire."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        by_partition = defaultdict(list)
        for key, headers, value in records:  # where the producer's default partitioner puts each key
            by_partition[DefaultPartitioner()(key, partitions, partitions)].append((key, headers, value))
        wire = []
        for partition, recs in by_partition.items():
            batch = producer.create_batch()
            for key, headers, value in recs:
                assert batch.append(key=key, value=value, timestamp=None, headers=headers) is not None
            await (await producer.send_batch(batch, topic, partition=partition))
            wire.append(DefaultRecordBatch(bytes(batch._build())).compression_type)  # the bytes that were sent
        return wire
    finally:
        await producer.stop()


async def wait_for_exit(worker: Worker, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while worker.proc.poll() is None:
        assert time.monotonic() < deadline, f"the worker neither stopped nor went on; log: {worker.log_path}"
        await asyncio.sleep(0.2)
    return worker.proc.returncode


@pytest.mark.parametrize("codec", list(CODECS))
def test_every_codec_round_trips_through_aiokafkas_record_batch(codec: str) -> None:
    """The worker's decompression path without a broker: aiokafka's batch reader (Cython) and cramjam."""
    builder = DefaultRecordBatchBuilder(2, CODECS[codec], 0, -1, -1, 0, 1 << 20)
    sent = shuffled_events(codec)
    for i, (key, headers, value) in enumerate(sent):
        builder.append(i, 1_700_000_000_000 + i, key, value, headers)
    batch = DefaultRecordBatch(bytes(builder.build()))
    assert batch.compression_type == CODECS[codec]
    assert [(r.key, list(r.headers), r.value) for r in batch] == sent


@pytest.mark.parametrize("codec", list(CODECS))
async def test_compressed_input_is_applied_in_order(codec: str, broker, redis_url) -> None:
    deployment = Deployment(broker.url, redis_url)
    await deployment.create_topics()
    settings = deployment.settings()
    records = shuffled_events(codec)
    worker = Worker(deployment, codec)
    try:
        await worker.ready()
        wire = await send_compressed(broker.bootstrap, settings.input_topic, records, codec)
        assert wire and set(wire) == {CODECS[codec]}, f"not compressed on the wire: {wire}"
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(records), timeout=60)
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    assert sequences_by_aggregate(out) == {f"{codec}-{a}": [1, 2, 3, 4, 5] for a in range(2)}


async def test_a_batch_whose_codec_is_missing_stops_the_worker_loudly_and_waits_uncommitted(
    broker, redis_url, tmp_path: Path
) -> None:
    """A batch the client cannot decompress is not one record's content: nothing to dead-letter.
    The worker logs it as critical and exits non-zero (it does not stall); the batch is not
    committed, so a worker that has the codec applies it."""
    hide = tmp_path / "no-cramjam"
    hide.mkdir()
    (hide / "cramjam.py").write_text('raise ImportError("cramjam hidden by the test")\n')
    deployment = Deployment(broker.url, redis_url)
    await deployment.create_topics()
    settings = deployment.settings()
    records = shuffled_events("snappy")
    blind = Worker(deployment, "no-cramjam", PYTHONPATH=str(hide))
    try:
        await blind.ready()
        await send_compressed(broker.bootstrap, settings.input_topic, records, "snappy")
        assert await wait_for_exit(blind) != 0
    finally:
        blind.stop()
    log = blind.log_path.read_text(errors="replace")
    assert "CRITICAL" in log and "cannot be read" in log, blind.tail()
    assert "Libraries for snappy compression codec not found" in log
    assert await consume_all(broker.bootstrap, settings.output_topic, quiet=1) == []

    worker = Worker(deployment, "with-cramjam")
    try:
        await worker.ready()
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(records), timeout=60)
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    assert sequences_by_aggregate(out) == {f"snappy-{a}": [1, 2, 3, 4, 5] for a in range(2)}


class _CorruptGzip(_DefaultRecordBatchBuilderPy):
    """Marks the batch gzip but writes bytes that are not a gzip stream (with a valid CRC): a
    broken producer. Tansu stores it as it is; Apache Kafka is expected to refuse it at produce."""

    def _maybe_compress(self) -> bool:
        del self._buffer[self.HEADER_STRUCT.size :]
        self._buffer += b"\x1f\x8b\x08\x00not a gzip stream at all"
        self._compression_type = CODECS["gzip"]
        return True


async def test_a_corrupt_compressed_batch_stops_the_worker_loudly(broker, redis_url) -> None:
    deployment = Deployment(broker.url, redis_url)
    await deployment.create_topics()
    settings = deployment.settings()
    worker = Worker(deployment, "corrupt")
    try:
        await worker.ready()
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            batch = producer.create_batch()
            batch._builder = _CorruptGzip(2, 0, 0, -1, -1, 0, 1 << 20)  # private: no public way to send bad bytes
            key, headers, value = event("corrupt", 1, "note")
            assert batch.append(key=key, value=value, timestamp=None, headers=headers) is not None
            meta = await (await producer.send_batch(batch, settings.input_topic, partition=0))
        finally:
            await producer.stop()
        assert await wait_for_exit(worker) != 0
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "CRITICAL" in log and f"the record batch at offsets {meta.offset}..{meta.offset} cannot be read" in log
