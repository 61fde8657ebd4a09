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
(Faust seeks there on assignment; and this worker seeks there itself when it owns the
partition again, since that seek may have run before the drop, for example while the loop
waited for the fetch); the tables make the processed ones duplicates.

Offsets: Faust commits past the offsets it was told the fetcher passed over (transaction
markers), so the loop counts only those it can prove: it takes every record handed out and
tracks the offset it expects next itself, forgotten at every seek and rebalance, since
Faust's read offsets can trail the fetcher when a seek runs beside a fetch.

The same fence (workers/kafka/fence.py) goes with each batch to the processor, which checks it again
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
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from workers.kafka import hooks_of, progress
from workers.kafka.fence import Fence, LeaseLeft, fenced, generation, wait_writable, write_fence
from workers.records import InRecord

log = logging.getLogger(__name__)

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
    lease_left: LeaseLeft | None = None
    #: Since when each ordered partition is read to its end (the gap clock's idle signal).
    complete: dict[progress.Place, progress.Complete] = field(default_factory=dict)
    fenced_batches: int = 0  # batches dropped by the fence before they wrote
    #: Seeks of the stream partitions begun or ended (Faust seeks to the committed offsets after
    #: every recovery, and a recovery can finish after the next rebalance began): what was
    #: observed complete before a seek says nothing about the position after it.
    seeks: int = 0
    #: Called at every seek (the gap clocks start unknown again: app.py).
    on_seek: list[Callable[[], None]] = field(default_factory=list)
    #: Called with the seconds from asking for records (after the last batch) until a fetch
    #: brought some of the ordered topics (the batch's fetch phase, idle time included).
    on_fetched: Callable[[float], None] | None = None
    #: Seeks running now (Faust's ``perform_seek``; ``seeks`` counts their starts and ends).
    seeks_running: int = 0
    #: Per ordered partition (Faust's TP), the offset the loop expects next from the fetcher:
    #: the one after the last record it took, in rebalance generation ``expected_generation``.
    #: Forgotten at every seek and rebalance. Faust's read offsets cannot serve here: a seek
    #: updates them after the fetcher moved, and this loop may take a fetch in between, so they
    #: can trail the fetcher's position, and offsets counted as a gap from them are committed
    #: as read without ever being processed.
    expected: dict[Any, int] = field(default_factory=dict)
    expected_generation: int = -1

    def seeking(self) -> None:
        self.seeks += 1
        self.complete.clear()
        self.expected.clear()
        for callback in self.on_seek:
            callback()


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
        delivery = hooks.delivery
        delivery.seeking()  # observations made while it runs are void too
        delivery.seeks_running += 1
        before = {tp: self._read_offset.get(tp) for tp in self.assignment() if tp.topic in delivery.topics}
        try:
            return await original_seek(self)
        finally:
            delivery.seeks_running -= 1
            delivery.seeking()
            log.info("sought to the committed offsets: %s", _moves(self, before))

    cls._drain_messages = drain  # type: ignore[method-assign]
    cls.perform_seek = perform_seek  # type: ignore[method-assign]
    cls._seqguard_batches = True  # type: ignore[attr-defined]


def _moves(consumer: Any, before: dict[Any, int | None]) -> str:
    """Each ordered partition's read offset before -> after a seek (and the committed offset Faust holds)."""
    return ", ".join(
        f"{tp.topic}[{tp.partition}] {was}->{consumer._read_offset.get(tp)}"
        f" (committed {consumer._committed_offset.get(tp)})"
        for tp, was in sorted(before.items())
    )


async def drain_in_batches(consumer: Any, fetcher: Any, delivery: Delivery) -> None:
    """Faust's ``_drain_messages`` loop, with the ordered topics' records delivered in fenced batches."""
    consumer_stopped = consumer._stopped.is_set
    fetcher_stopped = fetcher._stopped.is_set
    asked = time.perf_counter()
    try:
        while not (consumer_stopped() or fetcher_stopped()):
            fetch_generation = generation(consumer)  # before the fetch: its records are this old at most
            if delivery.expected_generation != fetch_generation:
                delivery.expected.clear()
                delivery.expected_generation = fetch_generation
            seeks = delivery.seeks
            _observe(consumer, delivery, fetch_generation)
            records, active = await consumer._wait_next_records(1.0)
            await consumer.sleep(0)
            if records is None or consumer.should_stop:
                continue
            if not consumer.flow_active:
                await _seek_back(consumer)
                continue
            # Did the fetcher's position move only by the records handed out? Not if a seek or a
            # rebalance ran (or runs) while the fetch was made: then no offsets count as passed over.
            steady = seeks == delivery.seeks and not delivery.seeks_running and generation(consumer) == fetch_generation
            batch, tps = await _take(consumer, records, active, delivery, steady)
            if batch:
                await _deliver_fetch(consumer, delivery, batch, tps, fetch_generation, time.perf_counter() - asked)
                asked = time.perf_counter()
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            return
        raise


async def _deliver_fetch(
    consumer: Any,
    delivery: Delivery,
    batch: list[InRecord],
    tps: dict[tuple[str, int], Any],
    fetch_generation: int,
    waited: float,
) -> None:
    if delivery.on_fetched is not None:
        delivery.on_fetched(waited)
    unacked: set[tuple[str, int]] = set()
    delivered = await deliver_fenced(consumer, delivery, batch, tps, fetch_generation, unacked)
    # The fetcher's position is past every record taken. Records of a partition this worker
    # owns (again) that were not acked must be read again from the committed offset: the seek
    # of its assignment may already have run (while the loop waited for this fetch, or while a
    # batch ran), and nobody else reads them.
    reread = bool(unacked) and not unacked.isdisjoint((tp.topic, tp.partition) for tp in consumer.assignment())
    if not delivered:
        await _after_fence(consumer, delivery, fetch_generation, reread)
    elif reread:
        log.info("records of partitions owned again were not processed: reading again from the committed offsets")
        await _seek_back(consumer)
    else:
        await _commit_if_due(consumer)


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
    consumer: Any, records: Any, active: Any, delivery: Delivery, steady: bool
) -> tuple[list[InRecord], dict[tuple[str, int], Any]]:
    """The fetch's records of the delivery's topics as InRecords (and their Faust TPs); every
    other topic's records go through Faust's callback, as Faust's loop does."""
    read_offset, topics, expected = consumer._read_offset, delivery.topics, delivery.expected
    batch: list[InRecord] = []
    tps: dict[tuple[str, int], Any] = {}
    for tp, recs in records.items():
        if active is not None and tp not in active and tp not in consumer._buffered_partitions:
            expected.pop(tp, None)  # the fetcher moved past these records
            continue
        if tp.topic in topics:
            tps[(tp.topic, tp.partition)] = tp
            after = await _take_ours(consumer, tp, recs, expected.get(tp) if steady else None, batch)
            if after is not None:
                expected[tp] = after
                read_offset[tp] = after - 1  # Faust's bookkeeping: the last offset read
            continue
        last = read_offset.get(tp)
        for record in recs:
            offset = record.offset
            if last is not None and offset < last:
                continue  # read already (Faust drops these too)
            await consumer.wait_first(consumer.callback(consumer._to_message(tp, record)), consumer.suspend_flow.wait())
            last = offset
            read_offset[tp] = offset
    return batch, tps


async def _take_ours(consumer: Any, tp: Any, recs: Any, expected: int | None, batch: list[InRecord]) -> int | None:
    """Append one partition's records to ``batch``; the offset expected next (None: none taken).

    Every record the fetcher hands out is taken, below ``expected`` too (read again after a
    seek back: the tables make them duplicates). Offsets the fetcher passed over (transaction
    markers, compaction) count as a gap, so that commits can pass them, only where the loop
    knows the position: between two records of the fetch, or from ``expected`` (None when a
    seek or a rebalance may have moved the position). The fetcher makes the ordered topics'
    records InRecords already (patches.IN_RECORD_TOPICS): a consecutive run is taken whole."""
    if recs and type(recs[0]) is InRecord:
        first, end = recs[0].offset, recs[-1].offset
        if (expected is None or first == expected) and end - first == len(recs) - 1:
            batch.extend(recs)
            return end + 1
    for record in recs:
        offset = record.offset
        if expected is not None and offset > expected:
            log.debug("%s[%d]: offsets %d-%d passed over by the fetcher", tp.topic, tp.partition, expected, offset - 1)
            await consumer._add_gap(tp, expected, offset - 1)
        batch.append(record if type(record) is InRecord else InRecord.of(record.topic, record.partition, record))
        expected = offset + 1
    return expected


async def deliver_fenced(
    consumer: Any,
    delivery: Delivery,
    batch: list[InRecord],
    tps: dict[tuple[str, int], Any],
    fetch_generation: int,
    unacked: set[tuple[str, int]],
) -> bool:
    """Hand ``batch`` to the handler in chunks; fence each chunk before it runs, while it
    writes, and before its ack. False if a chunk was dropped by the fence after it began
    (its records and the rest are neither processed nor acked: the caller seeks back).
    ``unacked`` collects the places of every record taken and not acked."""
    step = delivery.max_batch
    for start in range(0, len(batch), step):
        chunk = batch[start : start + step]
        if not await wait_writable(consumer, delivery.lease_left, fetch_generation):
            unacked.update(_places(batch[start:]))
            return False
        kept, dropped = fenced(chunk, consumer.assignment(), fetch_generation, generation(consumer))
        if dropped:
            delivery.left += len(dropped)
            unacked.update(_places(dropped))
            log.info("left %d records of revoked partitions to their owner (not processed, not acked)", len(dropped))
        if not kept:
            continue
        processed = await delivery.handler(kept, write_fence(consumer, delivery.lease_left, fetch_generation))
        delivery.batches += 1
        if len(processed) < len(kept):
            delivery.fenced_batches += 1
            unacked.update(_places(batch[start:]))
            return False
        done, undone = fenced(processed, consumer.assignment(), fetch_generation, generation(consumer))
        if undone:
            unacked.update(_places(undone))
            log.info("a rebalance ran during the batch: %d processed records left unacked, read again", len(undone))
        by_tp: dict[Any, list[int]] = defaultdict(list)
        for record in done:
            by_tp[tps[(record.topic, record.partition)]].append(record.offset)
        for tp, offsets in by_tp.items():
            ack_offsets(consumer, tp, offsets)
    return True


def _places(records: Sequence[InRecord]) -> set[tuple[str, int]]:
    return {(r.topic, r.partition) for r in records}


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


async def _after_fence(consumer: Any, delivery: Delivery, fetch_generation: int, reread: bool = False) -> None:
    """A batch was dropped before it wrote: read again from the committed offsets, once
    this member may write again, or at once if a rebalance since gave this worker partitions
    whose records were left (its assignment's seek may have run before the drop)."""
    log.warning("batch dropped by the write fence; reading again from the committed offsets")
    writable = await wait_writable(consumer, delivery.lease_left, fetch_generation)
    if (writable and generation(consumer) == fetch_generation) or reread:
        await _seek_back(consumer)
