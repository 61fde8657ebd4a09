"""The gap clock (tables.clock) through the functions the binding calls: a fake log, a fake
wall clock, restarts, pauses and backlogs. The property the clock exists for: a gap never
times out while the missing event is in the log, unread, and written within the timeout."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tables.clock import PartitionClock
from tables.policy import Policy
from tables.sequencer import Incoming, receive
from tables.state import Aggregate
from tables.timers import gap_due

TIMEOUT = 5.0
ORDERED = Policy(ordering="ordered", gap_timeout=TIMEOUT, gap_policy="skip")
INPUT, REPARTITION = "events", "events-repartition"


def policy_of(_: str) -> Policy:
    return ORDERED


def test_unknown_until_every_lagging_source_was_read() -> None:
    clock = PartitionClock()
    assert clock.advance({INPUT: None, REPARTITION: 90.0}, wall=100.0) is None  # input: nothing read yet
    clock.observe(INPUT, 50.0, wall=100.0)
    assert clock.advance({INPUT: None, REPARTITION: 90.0}, wall=100.0) == 50.0  # the lagging source bounds it
    assert clock.advance({INPUT: 99.0, REPARTITION: 98.0}, wall=100.0) == 98.0  # both read to their end


def test_never_ahead_of_the_wall_nor_backwards() -> None:
    clock = PartitionClock()
    assert clock.observe(INPUT, 1e12, wall=100.0) == 100.0  # a producer clock far ahead is capped
    assert clock.advance({INPUT: 99.0}, wall=100.0) == 99.0
    clock.observe(INPUT, 10.0, wall=101.0)  # a replayed record with an old timestamp
    assert clock.advance({INPUT: None}, wall=101.0) == 100.0  # lagging: its newest record (capped), never 10


def test_a_late_record_starts_waiting_at_the_clock_not_at_its_old_timestamp() -> None:
    clock = PartitionClock()
    clock.advance({INPUT: 200.0}, wall=200.0)
    assert clock.observe(INPUT, 10.0, wall=201.0) == 200.0


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[float], int, int, list[int], list[float], set[int]]:
    """A partition's records (timestamps in log order, non-decreasing), the buffered event's
    index, the missing event's index (after it, written within the timeout), the chunks the
    worker reads them in, the wall-clock pause before each chunk, and chunks after a restart."""
    gaps = draw(st.lists(st.floats(0, 3), min_size=3, max_size=60))
    stamps = [1_000.0]
    for g in gaps:
        stamps.append(stamps[-1] + g)
    n = len(stamps)
    buffered = draw(st.integers(0, n - 2))
    later = [j for j in range(buffered + 1, n) if stamps[j] - stamps[buffered] < TIMEOUT]
    missing = draw(st.sampled_from(later)) if later else buffered + 1
    chunks = draw(st.lists(st.integers(1, 10), min_size=1, max_size=n))
    pauses = draw(st.lists(st.floats(0, 120), min_size=len(chunks), max_size=len(chunks)))
    restarts = set(draw(st.lists(st.integers(0, len(chunks)), max_size=3)))
    return stamps, buffered, missing, chunks, pauses, restarts


@settings(max_examples=300, deadline=None)
@given(logs())
def test_a_gap_never_times_out_while_the_missing_event_waits_unread_in_the_log(case) -> None:  # type: ignore[no-untyped-def]
    stamps, buffered, missing, chunks, pauses, restarts = case
    if stamps[missing] - stamps[buffered] >= TIMEOUT:
        return  # no event written within the timeout after the buffered one: nothing to show
    wall = stamps[-1] + 1.0  # a backlog: every record is in the log before the worker reads
    clock, agg, position = PartitionClock(), Aggregate(), 0
    for i, (size, pause) in enumerate(zip(chunks, pauses, strict=True)):
        wall += pause  # down, recovering, or slow: wall time passes, the log does not
        if i in restarts:
            clock = PartitionClock()  # a restart: the clock starts unknown again
        for offset in range(position, min(position + size, len(stamps))):
            at = clock.observe(INPUT, stamps[offset], wall)
            if offset == buffered:
                receive(agg, Incoming(2, "e2", "t", None, at), ORDERED, wall)  # 1 is the missing one
        position = min(position + size, len(stamps))
        complete = wall if position == len(stamps) else None
        now = clock.advance({INPUT: complete}, wall)
        if position <= missing and now is not None and buffered < position:
            assert not gap_due(agg, policy_of, now), (now, stamps[buffered], position, missing)


def test_an_idle_partition_times_a_real_gap_out_in_wall_time() -> None:
    clock, agg = PartitionClock(), Aggregate()
    at = clock.observe(INPUT, 1_000.0, wall=1_000.0)
    receive(agg, Incoming(2, "e2", "t", None, at), ORDERED, 1_000.0)
    for wall in (1_001.0, 1_004.0):
        assert not gap_due(agg, policy_of, clock.advance({INPUT: wall}, wall) or 0.0)
    assert gap_due(agg, policy_of, clock.advance({INPUT: 1_005.5}, 1_005.5) or 0.0)


def test_a_busy_partition_times_a_real_gap_out_in_stream_time() -> None:
    clock, agg = PartitionClock(), Aggregate()
    at = clock.observe(INPUT, 1_000.0, wall=1_000.0)
    receive(agg, Incoming(2, "e2", "t", None, at), ORDERED, 1_000.0)
    for ts in range(1_001, 1_006):  # other aggregates' records keep the partition lagging
        clock.observe(INPUT, float(ts), wall=float(ts))
        assert not gap_due(agg, policy_of, clock.advance({INPUT: None}, float(ts)) or 0.0)
    clock.observe(INPUT, 1_005.5, wall=1_005.5)
    assert gap_due(agg, policy_of, clock.advance({INPUT: None}, 1_005.5) or 0.0)


def test_a_partition_seen_complete_before_a_seek_is_not_complete_after_it() -> None:
    """Faust seeks the stream partitions to their committed offsets when a recovery ends, and a
    recovery can end after the next rebalance began: a fetch state seen before that seek said
    "read to the end" of a position the seek moved back (chaos seed 3748091862 skipped a gap
    whose missing event was still unread behind the committed offset)."""
    from workers.kafka import progress
    from workers.kafka.delivery import Delivery

    async def nothing(records: Any, fence: Any) -> Any:
        return records

    delivery = Delivery(frozenset({"in"}), nothing)
    cleared: list[bool] = []
    delivery.on_seek.append(lambda: cleared.append(True))
    delivery.complete[("in", 0)] = progress.Complete(4, 100.0, delivery.seeks)
    assert progress.complete_at(delivery.complete, [("in", 0)], 4, delivery.seeks) == {"in": 100.0}
    stale = dict(delivery.complete)
    delivery.seeking()
    assert cleared == [True]
    assert delivery.complete == {}
    # An observation recorded with the count read before the seek is void after it.
    assert progress.complete_at(stale, [("in", 0)], 4, delivery.seeks) == {"in": None}
