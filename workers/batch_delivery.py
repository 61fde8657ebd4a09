"""Batch delivery: records of the ordered topics go from the fetch to the processor in batches.

Faust delivers every message on its own: for each one its consumer awaits
``wait_first(callback(message), ...)`` (two tasks), the conductor decodes it into an
Event, a channel queues it, and the stream hands it to ``take_events``. Measured here,
that path is about half of a worker's CPU. With batch delivery on, the records of
seqguard's ordered topics skip it: each fetch becomes one ``process_batch`` call, and
the offsets are acked to Faust (which commits them) after the batch returned. Every
other topic (changelogs, during recovery and on standbys) keeps Faust's own path, and
Faust keeps the assignment, recovery, commits and tables.

It replaces one method of faust-streaming's aiokafka Consumer (``_drain_messages``,
checked against 0.15.3); the agent stays declared, so Faust subscribes and assigns
the ordered topics as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

from workers.records import InRecord

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[InRecord]], Awaitable[None]]


@dataclass(eq=False)  # no slots: Faust keeps unacked messages in a WeakSet
class _Acked:
    """What Faust's ``Consumer.ack`` reads of a message."""

    tp: Any
    topic: str
    offset: int
    acked: bool = False


@dataclass
class Delivery:
    topics: frozenset[str]
    handler: BatchHandler
    max_batch: int = 1_000  # a fetch larger than this is processed in several batches
    batches: int = field(default=0)


def install() -> None:
    """Route ``app.seqguard_delivery`` topics in batches; apps without it keep Faust's path."""
    cls = faust_aiokafka.Consumer
    if getattr(cls, "_seqguard_batches", False):
        return
    original = cls._drain_messages

    async def drain(self: Any, fetcher: Any) -> None:
        delivery = getattr(self.app, "seqguard_delivery", None)
        if delivery is None:
            return await original(self, fetcher)
        return await _drain_in_batches(self, fetcher, delivery)

    cls._drain_messages = drain  # type: ignore[method-assign]
    cls._seqguard_batches = True  # type: ignore[attr-defined]


async def _drain_in_batches(consumer: Any, fetcher: Any, delivery: Delivery) -> None:  # noqa: C901 - mirrors Faust's loop
    callback = consumer.callback
    read_offset = consumer._read_offset
    consumer_stopped = consumer._stopped.is_set
    fetcher_stopped = fetcher._stopped.is_set
    topics = delivery.topics
    try:
        while not (consumer_stopped() or fetcher_stopped()):
            records, active = await consumer._wait_next_records(1.0)
            await consumer.sleep(0)
            if records is None or consumer.should_stop:
                continue
            if not consumer.flow_active:
                # A rebalance began after this fetch: drop it and seek back to the committed
                # offsets, as Faust's own getmany does, so nothing fetched here is skipped.
                try:
                    await consumer.perform_seek()
                except Exception as exc:  # noqa: BLE001 - Faust logs and goes on here too
                    log.warning("seek to committed offsets failed: %r", exc)
                continue
            batch: list[InRecord] = []
            taken: list[_Acked] = []
            for tp, recs in records.items():
                if active is not None and tp not in active and tp not in consumer._buffered_partitions:
                    continue
                last = read_offset.get(tp)
                for record in recs:
                    offset = record.offset
                    if last is not None and offset < last:
                        continue  # read already (Faust drops these too)
                    if last is not None and offset - last > 1 and tp.topic in topics:
                        await consumer._add_gap(tp, last + 1, offset)  # compaction or transaction markers
                    if tp.topic in topics:
                        ts = record.timestamp
                        batch.append(
                            InRecord(
                                record.topic,
                                record.partition,
                                offset,
                                None if ts is None else ts / 1000.0,
                                record.key,
                                record.value,
                                list(record.headers or ()),
                            )
                        )
                        taken.append(_Acked(tp, record.topic, offset))
                    else:
                        await consumer.wait_first(
                            callback(consumer._to_message(tp, record)), consumer.suspend_flow.wait()
                        )
                    last = offset
                    read_offset[tp] = offset
            step = delivery.max_batch
            for start in range(0, len(batch), step):
                await delivery.handler(batch[start : start + step])
                delivery.batches += 1
                for message in taken[start : start + step]:
                    consumer.ack(message)
            if batch:
                commit_every = consumer._commit_every
                if commit_every is not None and consumer._n_acked >= commit_every:
                    consumer._n_acked = 0
                    await consumer.commit()
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            return
        raise
