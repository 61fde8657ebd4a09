"""Everything one batch produces, sent together and acknowledged before the batch is.

Records with a known partition (output, audit, changelogs) are appended to one Kafka
record batch per partition (aiokafka's BatchBuilder): appending costs a few µs, while
``producer.send`` costs ~20 µs a record in metadata lookups, futures and logging.
Records the partitioner must place (DLQ, repartition) go through ``send``.

Sealing: the embedded broker answers ListOffsets "latest" with the start of the last
record batch + 1, and Faust stops restoring a table there, dropping the rest of that
batch (shared/EMBEDDED-BROKER.md, trap 1). With sealing on, each flush ends every
changelog partition it wrote with a one-record batch (that partition's last record,
again), which makes the answer exact. On Apache Kafka it costs one duplicate record per
changelog partition per batch, removed by compaction; turn it off there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

Headers = Sequence[tuple[str, bytes | None]]
Record = tuple[bytes | None, bytes | None, int | None, Headers]  # key, value, timestamp ms, headers


class Sink:
    """``make_producer`` is called (in the event loop) by ``start``: aiokafka needs a running loop."""

    def __init__(
        self, make_producer: Callable[[], AIOKafkaProducer], *, seal_topics: frozenset[str] = frozenset()
    ) -> None:
        self._make_producer = make_producer
        self._producer: AIOKafkaProducer | None = None
        self.seal_topics = seal_topics
        self._builders: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self._futures: list[Any] = []
        self._last: dict[tuple[str, int], Record] = {}

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Sink.start() was not awaited")
        return self._producer

    async def start(self) -> None:
        if self._producer is None:
            producer = self._make_producer()
            await producer.start()
            self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: Headers,
    ) -> None:
        """Append a record for ``topic``/``partition`` to this batch (no I/O)."""
        if not isinstance(headers, list):
            headers = list(headers)  # the builder takes lists only
        tp = (topic, partition)
        builder = self._builders.get(tp)
        if builder is None:
            builder = self._builders[tp] = self.producer.create_batch()
        if builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers) is None:
            self._full.append((topic, partition, builder))  # full: it goes first, in order
            builder = self._builders[tp] = self.producer.create_batch()
            if builder.append(timestamp=timestamp_ms, key=key, value=value, headers=headers) is None:
                raise ValueError(f"a record for {topic} does not fit in an empty batch")
        if topic in self.seal_topics:
            self._last[tp] = (key, value, timestamp_ms, headers)

    async def send_keyed(
        self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int | None, headers: Headers
    ) -> None:
        """A record placed by the producer's partitioner (by key), acknowledged at flush."""
        self._futures.append(
            await self.producer.send(topic, value, key=key, timestamp_ms=timestamp_ms, headers=list(headers))
        )

    async def flush(self) -> None:
        """Send everything added since the last flush and wait until the broker acknowledged it all."""
        batches = self._full + [(t, p, b) for (t, p), b in self._builders.items()]
        self._full, self._builders = [], {}
        futures, self._futures = self._futures, []
        for topic, partition, builder in batches:
            futures.append(await self.producer.send_batch(builder, topic, partition=partition))
        for fut in futures:
            await fut  # raises the produce error, if any
        if self._last:
            seals = []
            for (topic, partition), (key, value, ts, headers) in self._last.items():
                builder = self.producer.create_batch()
                builder.append(timestamp=ts, key=key, value=value, headers=headers)
                seals.append(await self.producer.send_batch(builder, topic, partition=partition))
            self._last.clear()
            for fut in seals:
                await fut
