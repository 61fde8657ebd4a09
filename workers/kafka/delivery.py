"""Batch delivery: records of the ordered topics go from the fetch to the processor in batches.

Faust delivers every message on its own: for each one its consumer awaits
``wait_first(callback(message), ...)`` (two tasks), the conductor decodes it into an
Event, a channel queues it, and the stream hands it to the agent. Measured here, that
path is about half of a worker's CPU. Batch delivery skips it for seqguard's ordered
topics: a fetch becomes one handler call per ``max_batch`` records, and the records the
handler processed are acked to Faust (which commits them) after it returned. Every other
topic (changelogs, during recovery and on standbys) keeps Faust's own path, and Faust
keeps the assignment, recovery, commits and tables.

The fence: a rebalance can revoke a partition between two chunks of one fetch, or while
a chunk runs. Faust then forgets the partition's committed offset, and an ack for it
lands in a fresh list that a later commit (once the partition is assigned again) moves
past, whether or not the record was processed. So before each chunk the records of
partitions revoked since the fetch are dropped (neither processed nor acked), and after
it only records still owned in the fetch's rebalance generation are acked. Dropped and
unacked records are read again from the committed offset by the partition's owner
(Faust seeks there on assignment); the tables make the processed ones duplicates.

The same fence goes with each batch to the processor (``Fence``), which checks it again
before each handler and before it writes anything: a batch that a rebalance or an
expired membership lease (workers/kafka/lease.py) overtook writes nothing, its records
are not acked, and the loop seeks back to the committed offsets once the lease is
confirmed again. Between fetches the loop also records which partitions are read to
their end (workers/kafka/progress.py): the gap clock's idle signal.

It replaces one method of faust-streaming's aiokafka Consumer (``_drain_messages``,
checked against 0.15.3); the agent stays declared, so Faust subscribes and assigns the
ordered topics as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from workers.kafka import hooks_of, progress
from workers.records import InRecord

log = logging.getLogger(__name__)

#: Why the batch may not write (its partitions moved, or the lease ran out); None: it may.
Fence = Callable[[], str | None]
#: Processes a batch and returns the records it processed: only those are acked. It
#: returns none of them if the fence closed before it wrote.
BatchHandler = Callable[[list[InRecord], Fence], Awaitable[Sequence[InRecord]]]


@dataclass
class Delivery:
    topics: frozenset[str]
    handler: BatchHandler
    max_batch: int = 1_000  # a fetch larger than this is processed in several batches
    batches: int = 0
    left: int = 0  # records of revoked partitions left to their owner: neither processed nor acked
    #: Seconds of membership lease left (workers/kafka/lease.py); None: always writable.
    lease_left: Callable[[Any], float] | None = None
    #: Since when each ordered partition is read to its end (the gap clock's idle signal).
    complete: dict[progress.Place, progress.Complete] = field(default_factory=dict)
    fenced_batches: int = 0  # batches dropped by the fence before they wrote
    #: Seeks of the stream partitions begun or ended (Faust seeks to the committed offsets after
    #: every recovery, and a recovery can finish after the next rebalance began): what was
    #: observed complete before a seek says nothing about the position after it.
    seeks: int = 0
    #: Called at every seek (the gap clocks start unknown again: app.py).
    on_seek: list[Callable[[], None]] = field(default_factory=list)

    def seeking(self) -> None:
        self.seeks += 1
        self.complete.clear()
        for callback in self.on_seek:
            callback()


def fenced(
    records: Sequence[InRecord], assigned: Collection[Any], generation_at_fetch: int, generation_now: int
) -> tuple[list[InRecord], list[InRecord]]:
    """(kept, dropped): a record is kept only if no rebalance began since its fetch and its
    partition is still assigned. ``assigned`` holds (topic, partition) pairs (Faust's TPs are)."""
    if generation_now != generation_at_fetch:
        return [], list(records)
    kept: list[InRecord] = []
    dropped: list[InRecord] = []
    for record in records:
        (kept if (record.topic, record.partition) in assigned else dropped).append(record)
    return kept, dropped


def generation(consumer: Any) -> int:
    """Faust counts rebalances in the rebalance listener, in the consumer thread, before the
    revocation reaches the event loop: it changes before any bookkeeping is dropped."""
    return int(consumer.app.rebalancing_count)


def install() -> None:
    """Route the hooks' delivery topics in batches; apps without hooks keep Faust's path."""
    cls = faust_aiokafka.Consumer
    if getattr(cls, "_seqguard_batches", False):
        return
    original = cls._drain_messages

    async def drain(self: Any, fetcher: Any) -> None:
        hooks = hooks_of(self.app)
        if hooks is None:
            return await original(self, fetcher)
        return await drain_in_batches(self, fetcher, hooks.delivery)

    original_seek = cls.perform_seek

    async def perform_seek(self: Any) -> None:
        hooks = hooks_of(self.app)
        if hooks is None:
            return await original_seek(self)
        hooks.delivery.seeking()  # observations made while it runs are void too
        try:
            return await original_seek(self)
        finally:
            hooks.delivery.seeking()

    cls._drain_messages = drain  # type: ignore[method-assign]
    cls.perform_seek = perform_seek  # type: ignore[method-assign]
    cls._seqguard_batches = True  # type: ignore[attr-defined]


async def drain_in_batches(consumer: Any, fetcher: Any, delivery: Delivery) -> None:
    """Faust's ``_drain_messages`` loop, with the ordered topics' records delivered in fenced batches."""
    consumer_stopped = consumer._stopped.is_set
    fetcher_stopped = fetcher._stopped.is_set
    try:
        while not (consumer_stopped() or fetcher_stopped()):
            fetch_generation = generation(consumer)  # before the fetch: its records are this old at most
            _observe(consumer, delivery, fetch_generation)
            records, active = await consumer._wait_next_records(1.0)
            await consumer.sleep(0)
            if records is None or consumer.should_stop:
                continue
            if not consumer.flow_active:
                await _seek_back(consumer)
                continue
            batch, tps = await _take(consumer, records, active, delivery.topics)
            if batch and not await deliver_fenced(consumer, delivery, batch, tps, fetch_generation):
                await _after_fence(consumer, delivery, fetch_generation)
            elif batch:
                await _commit_if_due(consumer)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            return
        raise


def _observe(consumer: Any, delivery: Delivery, fetch_generation: int) -> None:
    """Every record handed out so far is processed: record what is read to its end (not while
    a rebalance runs: the consumer's fetch state may still be the old assignment's)."""
    if consumer.flow_active and not consumer.app.rebalancing:
        progress.observe(consumer, delivery.topics, fetch_generation, delivery.complete, delivery.seeks)


async def _seek_back(consumer: Any) -> None:
    """A rebalance began after this fetch: drop it and seek back to the committed offsets,
    as Faust's own getmany does, so nothing fetched here is skipped."""
    try:
        await consumer.perform_seek()
    except Exception as exc:  # noqa: BLE001 - Faust logs and goes on here too
        log.warning("seek to committed offsets failed: %r", exc)


async def _commit_if_due(consumer: Any) -> None:
    commit_every = consumer._commit_every
    if commit_every is not None and consumer._n_acked >= commit_every:
        consumer._n_acked = 0
        await consumer.commit()


async def _take(
    consumer: Any, records: Any, active: Any, topics: frozenset[str]
) -> tuple[list[InRecord], dict[tuple[str, int], Any]]:
    """The fetch's records of ``topics`` as InRecords (and their Faust TPs); every other
    topic's records go through Faust's callback, as Faust's loop does."""
    read_offset = consumer._read_offset
    batch: list[InRecord] = []
    tps: dict[tuple[str, int], Any] = {}
    for tp, recs in records.items():
        if active is not None and tp not in active and tp not in consumer._buffered_partitions:
            continue
        last = read_offset.get(tp)
        if tp.topic in topics:
            tps[(tp.topic, tp.partition)] = tp
            last = await _take_ours(consumer, tp, recs, last, batch)
            if last is not None:
                read_offset[tp] = last
            continue
        for record in recs:
            offset = record.offset
            if last is not None and offset < last:
                continue  # read already (Faust drops these too)
            await consumer.wait_first(consumer.callback(consumer._to_message(tp, record)), consumer.suspend_flow.wait())
            last = offset
            read_offset[tp] = offset
    return batch, tps


async def _take_ours(consumer: Any, tp: Any, recs: Any, last: int | None, batch: list[InRecord]) -> int | None:
    """Append one partition's records to ``batch``; the last offset taken (the read offset)."""
    append, in_record = batch.append, InRecord
    for record in recs:
        offset = record.offset
        if last is not None:
            if offset < last:
                continue  # read already (Faust drops these too)
            if offset - last > 1:
                await consumer._add_gap(tp, last + 1, offset)  # compaction or transaction markers
        ts = record.timestamp
        headers = record.headers
        append(
            in_record(
                record.topic,
                record.partition,
                offset,
                None if ts is None else ts / 1000.0,
                record.key,
                record.value,
                list(headers) if headers else [],
            )
        )
        last = offset
    return last


async def deliver_fenced(
    consumer: Any, delivery: Delivery, batch: list[InRecord], tps: dict[tuple[str, int], Any], fetch_generation: int
) -> bool:
    """Hand ``batch`` to the handler in chunks; fence each chunk before it runs, while it
    writes, and before its ack. False if a chunk was dropped by the fence after it began
    (its records and the rest are neither processed nor acked: the caller seeks back)."""
    step = delivery.max_batch
    for start in range(0, len(batch), step):
        chunk = batch[start : start + step]
        if not await _wait_writable(consumer, delivery, fetch_generation):
            return False
        kept, dropped = fenced(chunk, consumer.assignment(), fetch_generation, generation(consumer))
        if dropped:
            delivery.left += len(dropped)
            log.info("left %d records of revoked partitions to their owner (not processed, not acked)", len(dropped))
        if not kept:
            continue
        processed = await delivery.handler(kept, _fence(consumer, delivery, fetch_generation))
        delivery.batches += 1
        if len(processed) < len(kept):
            delivery.fenced_batches += 1
            return False
        done, undone = fenced(processed, consumer.assignment(), fetch_generation, generation(consumer))
        if undone:
            log.info("a rebalance ran during the batch: %d processed records left unacked, read again", len(undone))
        by_tp: dict[Any, list[int]] = defaultdict(list)
        for record in done:
            by_tp[tps[(record.topic, record.partition)]].append(record.offset)
        for tp, offsets in by_tp.items():
            ack_offsets(consumer, tp, offsets)
    return True


def ack_offsets(consumer: Any, tp: Any, offsets: list[int]) -> None:
    """Faust's ``Consumer.ack`` for one partition's processed offsets at once: the same
    bookkeeping (checked against 0.15.3), without a Message object and a lock per record."""
    if not offsets or not consumer.app.topics.acks_enabled_for(tp.topic):
        return
    with ack_lock:
        committed = consumer._committed_offset[tp]
        index, acked = consumer._acked_index[tp], consumer._acked[tp]
        try:
            for offset in offsets:
                if (committed is None or offset >= committed) and offset not in index:
                    index.add(offset)
                    acked.append(offset)
                    consumer._n_acked += 1
        finally:
            notify(consumer._waiting_for_ack)


def _fence(consumer: Any, delivery: Delivery, fetch_generation: int) -> Fence:
    """Cheap enough to ask before every handler: a revocation always begins a new generation."""

    def why_not() -> str | None:
        if generation(consumer) != fetch_generation:
            return "a rebalance began"
        if delivery.lease_left is not None and delivery.lease_left(consumer) <= 0:
            return "the group membership lease ran out (no heartbeat confirmed within the session timeout)"
        return None

    return why_not


async def _wait_writable(consumer: Any, delivery: Delivery, fetch_generation: int) -> bool:
    """Wait until the lease is confirmed (a frozen worker waits here on resuming). False if a
    rebalance began meanwhile or the consumer stops: the fetch is stale."""
    if delivery.lease_left is None:
        return True
    waited = False
    while delivery.lease_left(consumer) <= 0:
        if not waited:
            log.warning("membership lease expired: holding batches until a heartbeat is confirmed or a rebalance")
            waited = True
        if generation(consumer) != fetch_generation or consumer.should_stop:
            return False
        await asyncio.sleep(0.05)
    return generation(consumer) == fetch_generation


async def _after_fence(consumer: Any, delivery: Delivery, fetch_generation: int) -> None:
    """A batch was dropped before it wrote: read again from the committed offsets, once
    this member may write again (a rebalance seeks there by itself)."""
    log.warning("batch dropped by the write fence; reading again from the committed offsets")
    if await _wait_writable(consumer, delivery, fetch_generation) and generation(consumer) == fetch_generation:
        await _seek_back(consumer)
