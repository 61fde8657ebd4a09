"""The batch delivery's fence, driven through its Faust loop with a fake consumer.

One fetch holds records of two partitions and is handed out in chunks. When partition B is
revoked while a chunk runs, Faust forgets B's committed offset, and an ack for B would let a
later commit move past records never processed. So records of B taken before the revocation
must be neither handed to the handler nor acked; only what the handler processed is acked.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from workers.kafka.delivery import Delivery, drain_in_batches
from workers.kafka.fence import Fence, fenced
from workers.records import InRecord

TOPIC = "seqguard.events"
A, B = TP(TOPIC, 0), TP(TOPIC, 1)


@dataclass
class FakeRecord:
    """What aiokafka's ConsumerRecord offers the delivery."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None = 1_700_000_000_000
    key: bytes | None = b"k"
    value: bytes | None = b"{}"
    headers: tuple[tuple[str, bytes], ...] = ()


class FakeConsumer:
    """The parts of faust-streaming's aiokafka Consumer the delivery touches: the fetches given, then stop."""

    consumer_stopped_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, fetch: dict[TP, list[FakeRecord]], *more: dict[TP, list[FakeRecord]]) -> None:
        topics = SimpleNamespace(acks_enabled_for=lambda topic: True)
        self.app = SimpleNamespace(rebalancing_count=0, rebalancing=False, should_stop=False, topics=topics)
        self.transport = SimpleNamespace(app=self.app)
        self._stopped = asyncio.Event()
        self._fetches = [fetch, *more]
        self._assigned = {tp for f in self._fetches for tp in f}
        self._read_offset: dict[TP, int] = {}
        self._buffered_partitions: set[TP] = set()
        self._commit_every = None
        self._n_acked = 0
        self.flow_active = True
        self.should_stop = False
        # Faust's ack bookkeeping (faust/transport/consumer.py), which ack_offsets fills
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._waiting_for_ack = None
        self.callback = None  # Faust's per-message path: no record here takes it
        self.seeks = 0
        self.gaps: list[tuple[TP, int, int]] = []  # Faust's _add_gap calls: offsets counted as read
        self.delivery: Delivery | None = None  # set by drive()

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        self.gaps.append((tp, offset_from, offset_to))

    async def perform_seek(self) -> None:
        self.seeks += 1

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        if not self._fetches:
            self._stopped.set()
            return None, None
        fetch = self._fetches.pop(0)
        return fetch, set(fetch)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    def assignment(self) -> set[TP]:
        return set(self._assigned)

    @property
    def acked(self) -> list[tuple[TP, int]]:
        return [(tp, offset) for tp, offsets in self._acked.items() for offset in offsets]

    def revoke(self, tp: TP, *, assigned_again: bool = False) -> None:
        """What a rebalance does, as the delivery can see it: Faust counts it, then moves ``tp``."""
        self.app.rebalancing_count += 1
        if not assigned_again:
            self._assigned.discard(tp)


def records(tp: TP, n: int, first: int = 0) -> list[FakeRecord]:
    return [FakeRecord(tp.topic, tp.partition, offset) for offset in range(first, first + n)]


def places(recs: list[InRecord]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in recs]


async def drive(
    consumer: FakeConsumer, handler: Any, max_batch: int = 2, lease_left: Any = None
) -> list[list[InRecord]]:
    handed: list[list[InRecord]] = []

    async def record_and_handle(batch: list[InRecord], fence: Fence) -> list[InRecord]:
        handed.append(list(batch))
        done: list[InRecord] = await handler(len(handed), batch)
        return batch if fence() is None and done else []  # as the processor: all, or none once fenced

    delivery = Delivery(frozenset({TOPIC}), record_and_handle, max_batch=max_batch, lease_left=lease_left)
    consumer.delivery = delivery
    await asyncio.wait_for(drain_in_batches(consumer, SimpleNamespace(_stopped=asyncio.Event()), delivery), 5)
    return handed


async def test_records_of_a_partition_revoked_during_an_earlier_chunk_are_neither_processed_nor_acked() -> None:
    consumer = FakeConsumer({A: records(A, 3), B: records(B, 3)})  # chunks: A0 A1 | A2 B0 | B1 B2

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        if n == 1:
            consumer.revoke(B)
        return batch

    handed = await drive(consumer, handler)
    handed_b = [place for chunk in handed for place in places(chunk) if place[0] == B.partition]
    assert handed_b == []
    assert [tp for tp, _ in consumer.acked if tp == B] == []
    # Chunk 1 ran while the rebalance began: processed, but not acked either (read again).
    assert consumer.acked == []


async def test_a_partition_revoked_and_assigned_again_is_read_again_not_delivered_from_the_old_fetch() -> None:
    consumer = FakeConsumer({A: records(A, 3), B: records(B, 3)})

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        if n == 1:
            consumer.revoke(B, assigned_again=True)  # Faust seeks B back to its committed offset
        return batch

    handed = await drive(consumer, handler)
    assert [places(chunk) for chunk in handed] == [[(0, 0), (0, 1)]]
    assert consumer.acked == []


async def test_a_chunk_during_which_a_rebalance_began_is_not_acked() -> None:
    consumer = FakeConsumer({A: records(A, 3), B: records(B, 3)})

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        if n == 2:
            consumer.revoke(B)  # while A2 and B0 are processed
        return batch

    handed = await drive(consumer, handler)
    assert [places(chunk) for chunk in handed] == [[(0, 0), (0, 1)], [(0, 2), (1, 0)]]
    assert consumer.acked == [(A, 0), (A, 1)]


async def test_a_batch_the_fence_dropped_is_not_acked_and_the_fetch_is_read_again() -> None:
    consumer = FakeConsumer({A: records(A, 3)})

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        return [] if n == 1 else batch  # the processor's answer when the fence closed on it

    handed = await drive(consumer, handler)
    assert [places(chunk) for chunk in handed] == [[(0, 0), (0, 1)]]  # A2 is not handed out after it
    assert consumer.acked == []
    assert consumer.seeks == 1  # back to the committed offsets: nothing is skipped


async def test_an_expired_lease_holds_the_batch_until_a_heartbeat_confirms_it() -> None:
    consumer = FakeConsumer({A: records(A, 2)})
    lease = {"left": -1.0}

    async def confirm_later() -> None:
        await asyncio.sleep(0.2)
        lease["left"] = 10.0

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        assert lease["left"] > 0  # never handed out while the lease is expired
        return batch

    confirming = asyncio.ensure_future(confirm_later())
    handed = await drive(consumer, handler, lease_left=lambda c: lease["left"])
    await confirming
    assert [places(chunk) for chunk in handed] == [[(0, 0), (0, 1)]]
    assert consumer.acked == [(A, 0), (A, 1)]


async def test_a_lease_that_expires_while_a_batch_runs_drops_the_batch() -> None:
    consumer = FakeConsumer({A: records(A, 2)})
    lease = {"left": 10.0}

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        lease["left"] = -1.0  # frozen mid-batch past the session timeout
        asyncio.get_running_loop().call_later(0.2, lease.update, {"left": 10.0})  # then a heartbeat
        return batch

    await drive(consumer, handler, lease_left=lambda c: lease["left"])
    assert consumer.acked == []
    assert consumer.seeks == 1  # once the lease was confirmed again


async def test_without_a_rebalance_every_record_is_delivered_in_order_and_acked() -> None:
    consumer = FakeConsumer({A: records(A, 3), B: records(B, 2)})

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        return batch

    handed = await drive(consumer, handler, max_batch=10)
    assert [places(chunk) for chunk in handed] == [[(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]]
    assert handed[0][0].timestamp == 1_700_000_000.0
    assert consumer.acked == [(A, 0), (A, 1), (A, 2), (B, 0), (B, 1)]


def rec(partition: int, offset: int) -> InRecord:
    return InRecord(TOPIC, partition, offset, None, None, None)


def test_fence_keeps_records_of_assigned_partitions_in_the_same_generation() -> None:
    kept, dropped = fenced([rec(0, 1), rec(1, 1), rec(0, 2)], {A}, 4, 4)
    assert (places(kept), places(dropped)) == ([(0, 1), (0, 2)], [(1, 1)])


def test_fence_drops_everything_once_a_rebalance_began() -> None:
    kept, dropped = fenced([rec(0, 1), rec(1, 1)], {A, B}, 4, 5)
    assert (kept, places(dropped)) == ([], [(0, 1), (1, 1)])


@dataclass(eq=False)
class _Message:
    """What Consumer.ack reads of a message (hashable: it is discarded from a set)."""

    tp: TP
    offset: int
    acked: bool = False

    @property
    def topic(self) -> str:
        return self.tp.topic


def test_ack_offsets_keeps_fausts_own_ack_bookkeeping() -> None:
    """ack_offsets against faust-streaming's Consumer.ack itself, run on the same state: offsets
    below the committed one and offsets acked already are left out the same way."""
    from faust.transport.consumer import Consumer

    from workers.kafka.delivery import ack_offsets

    ours, fausts = FakeConsumer({}), FakeConsumer({})
    for c in (ours, fausts):
        c._committed_offset[A] = 3
        c._unacked_messages = set()
    offsets = [1, 3, 4, 4, 6, 5, 9]
    ack_offsets(ours, A, offsets)
    for offset in offsets:
        Consumer.ack(fausts, _Message(A, offset))  # type: ignore[arg-type]
    assert (ours._acked, ours._acked_index, ours._n_acked) == (fausts._acked, fausts._acked_index, fausts._n_acked)
    assert ours._acked[A] == [3, 4, 6, 5, 9]


def rebalance_while_waiting(consumer: FakeConsumer, *, assigned_again: bool) -> None:
    """A whole rebalance runs while the loop waits for the fetch: each fetched partition is
    revoked and, if ``assigned_again``, assigned again (and sought back by Faust) before the records come."""
    wait = consumer._wait_next_records

    async def across_a_rebalance(timeout: float) -> tuple[Any, Any]:
        for tp in list(consumer._fetches[0] if consumer._fetches else ()):
            consumer.revoke(tp, assigned_again=assigned_again)
        return await wait(timeout)

    consumer._wait_next_records = across_a_rebalance  # type: ignore[method-assign]


async def every_record(n: int, batch: list[InRecord]) -> list[InRecord]:
    return batch


async def test_a_fetch_that_outlived_its_generation_on_partitions_owned_again_is_read_again() -> None:
    """The records are dropped (fetched in another generation); the assignment's seek already
    ran, so the delivery seeks again: otherwise the fetcher's position is past records nobody processed."""
    consumer = FakeConsumer({A: records(A, 3)})
    rebalance_while_waiting(consumer, assigned_again=True)
    handed = await drive(consumer, every_record)
    assert handed == [] and consumer.acked == []
    assert consumer.seeks == 1


async def test_records_of_a_partition_moved_away_are_left_without_a_seek() -> None:
    consumer = FakeConsumer({A: records(A, 2), B: records(B, 2)})
    rebalance_while_waiting(consumer, assigned_again=False)
    handed = await drive(consumer, every_record)
    assert handed == [] and consumer.acked == []
    assert consumer.seeks == 0  # their new owner reads them from the committed offset


async def test_a_fetch_made_while_a_seek_ran_counts_no_offsets_as_passed_over() -> None:
    """Seen in test_chaos: Faust's perform_seek moves the fetcher to the committed offset, the
    loop takes a fetch from there, and only then does the seek set Faust's read offset, back to
    the committed offset. Counted from that read offset, the next fetch's first offset looked
    like a gap of records never read, and Faust's commit moves past a gap."""
    consumer = FakeConsumer({A: records(A, 4, first=387)}, {A: records(A, 3, first=391)})
    wait = consumer._wait_next_records

    async def during_a_seek(timeout: float) -> tuple[Any, Any]:
        assert consumer.delivery is not None
        if consumer.delivery.seeks == 0:
            consumer.delivery.seeking()  # what the perform_seek patch does as the seek begins
            consumer.delivery.seeks_running += 1
        return await wait(timeout)

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        if n == 1:  # the seek ends while the first batch runs
            assert consumer.delivery is not None
            consumer.delivery.seeks_running -= 1
            consumer.delivery.seeking()
            consumer._read_offset[A] = 387  # Faust: read offsets := the committed offsets
        return batch

    consumer._wait_next_records = during_a_seek  # type: ignore[method-assign]
    handed = await drive(consumer, handler, max_batch=10)
    assert consumer.gaps == []
    assert [o for chunk in handed for _, o in places(chunk)] == list(range(387, 394))
    assert consumer.acked == [(A, o) for o in range(387, 394)]


async def test_offsets_the_fetcher_passed_over_without_a_seek_count_as_read() -> None:
    """Transaction markers take offsets no record has: within a fetch and between two fetches,
    the offsets passed over go to Faust's gap list, or commits would stop in front of them."""
    within = [FakeRecord(TOPIC, 0, 0), FakeRecord(TOPIC, 0, 1), FakeRecord(TOPIC, 0, 3)]
    consumer = FakeConsumer({A: within}, {A: records(A, 2, first=6)})
    handed = await drive(consumer, every_record, max_batch=10)
    assert consumer.gaps == [(A, 2, 2), (A, 4, 5)]
    assert [o for chunk in handed for _, o in places(chunk)] == [0, 1, 3, 6, 7]


async def test_records_before_the_expected_offset_are_taken_again_after_a_seek() -> None:
    """After a seek back the fetcher hands out records this loop took already: they are read
    again (the tables make them duplicates), never skipped as read."""
    consumer = FakeConsumer({A: records(A, 4)}, {A: records(A, 4, first=2)})

    async def handler(n: int, batch: list[InRecord]) -> list[InRecord]:
        if n == 1:
            assert consumer.delivery is not None
            consumer.delivery.seeking()
            consumer.delivery.seeking()  # a whole seek (to offset 2) while the batch ran
        return batch

    handed = await drive(consumer, handler, max_batch=10)
    assert [o for chunk in handed for _, o in places(chunk)] == [0, 1, 2, 3, 2, 3, 4, 5]
    assert consumer.gaps == []
