"""Everything one batch produces, sent together and acknowledged before the batch is.

Records with a known partition (output, audit, changelogs) are appended to one Kafka
record batch per partition (aiokafka's BatchBuilder): appending costs a few µs, while
``producer.send`` costs ~20 µs a record in metadata lookups, futures and logging.
Records the partitioner must place (DLQ, repartition) go through ``send``, at flush.
The record batches are closed before they are sent, so the producer's linger
(SEQGUARD_PRODUCER_LINGER_MS) delays only those: a batch's flush waits for no timer.
Nothing is sent before ``flush``, and ``flush`` sends only while its fence is open
(checked before the effects and again before the state): a batch the fence closed on
is discarded whole, or has sent effects but no state (re-emitted later, like a crash).

State goes last: a flush sends and awaits everything else (output, DLQ, audit,
repartition) before the changelog records. Without transactions a crash can split a
flush; this order makes the split harmless: state may lag its effects (after a restart
the event is applied again and its output re-emitted, a duplicate), but it never runs
ahead of them (an event recorded as applied whose output was lost).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

Headers = Sequence[tuple[str, bytes | None]]
#: Why the batch may not write (workers/kafka/delivery.py's Fence); None: it may.
FenceCheck = Callable[[], str | None]


class Fenced(Exception):  # noqa: N818 - a state, like asyncio.CancelledError, not a failure
    """The batch may not write: its partitions moved, or this member's lease ran out."""


class Sink:
    """``make_producer`` is called (in the event loop) by ``start``: aiokafka needs a running loop."""

    def __init__(self, make_producer: Callable[[], AIOKafkaProducer], *, state_topics: frozenset[str]) -> None:
        self._make_producer = make_producer
        self._producer: AIOKafkaProducer | None = None
        self.state_topics = state_topics
        self._builders: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self._keyed: list[tuple[str, bytes | None, bytes | None, int | None, list[Any]]] = []
        #: (state topic, partition) -> offset of its last record the last flush wrote, once every
        #: record of that flush was acknowledged (empty while a flush runs or after one failed):
        #: the RocksDB store's checkpoint (workers/kafka/rocks.py).
        self.state_offsets: dict[tuple[str, int], int] = {}
        #: Seconds the last flush waited for its effects, then for its state (the batch phases).
        self.effects_seconds = 0.0
        self.state_seconds = 0.0

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

    async def send_keyed(
        self, topic: str, key: bytes | None, value: bytes | None, timestamp_ms: int | None, headers: Headers
    ) -> None:
        """A record placed by the producer's partitioner (by key): sent and acknowledged at flush."""
        if key is None and value is None:
            # ``producer.send`` refuses a record with neither (an assert); a dead-lettered
            # null record must still go out: partition 0, in a record batch like the rest.
            self.add(topic, 0, None, None, timestamp_ms, headers)
            return
        self._keyed.append((topic, key, value, timestamp_ms, list(headers)))

    def discard(self) -> None:
        """Forget everything added since the last flush (the fence closed on the batch)."""
        self._full, self._builders, self._keyed = [], {}, []

    async def flush(self, fence: FenceCheck | None = None) -> None:
        """Send everything added since the last flush, state last, and wait until the broker
        acknowledged it all (raises the first produce error, or Fenced)."""
        batches = self._full + [(t, p, b) for (t, p), b in self._builders.items()]
        keyed = self._keyed
        self.discard()
        self.state_offsets = {}
        for _, _, builder in batches:
            builder.close()  # complete: aiokafka sends a closed batch at once instead of lingering on it
        _check(fence)
        started = time.perf_counter()
        effects = [
            await self.producer.send(topic, value, key=key, timestamp_ms=ts, headers=headers)
            for topic, key, value, ts, headers in keyed
        ]
        for topic, partition, builder in batches:
            if topic not in self.state_topics:
                effects.append(await self.producer.send_batch(builder, topic, partition=partition))
        for fut in effects:
            await fut
        effects_done = time.perf_counter()
        self.effects_seconds = effects_done - started
        _check(fence)  # a freeze while the effects were sent must not let stale state follow them
        state = [
            (
                topic,
                partition,
                builder.record_count(),
                await self.producer.send_batch(builder, topic, partition=partition),
            )
            for topic, partition, builder in batches
            if topic in self.state_topics
        ]
        offsets: dict[tuple[str, int], int] = {}
        for topic, partition, count, fut in state:
            first = (await fut).offset  # a record batch's metadata: the offset of its first record
            offsets[(topic, partition)] = max(first + count - 1, offsets.get((topic, partition), -1))
        self.state_offsets = offsets
        self.state_seconds = time.perf_counter() - effects_done


def _check(fence: FenceCheck | None) -> None:
    why = None if fence is None else fence()
    if why is not None:
        raise Fenced(why)
