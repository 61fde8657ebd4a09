"""One scenario per test, each named after the contract of the ordering core it pins down.

Pure: no I/O, a fake clock (plain float ``now``), the in-memory driver in _seqdriver.
"""

from __future__ import annotations

from tables.policy import Policy, PolicyBook
from tables.reorder import Buffered, ReorderBuffer
from tables.seen import SeenIds
from tables.sequence import Parked, SequenceState
from tables.sequencer import (
    Aggregate,
    Gap,
    Incoming,
    Limits,
    Verdict,
    applied,
    failed,
    pop_ready,
    receive,
)
from tables.state import decode, encode
from tables.timers import expire_gap, gap_due, is_idle, resolve
from tests.unit._seqdriver import Applied, Driver, ev

ORDERED = Policy(ordering="ordered", gap_timeout=30.0)
STRICT = Policy(ordering="strict", gap_timeout=30.0)
WARN = Policy(ordering="warn", gap_timeout=30.0)
UNORDERED = Policy(ordering="unordered", gap_timeout=30.0)


#: A raw input record as a buffer keeps it: non-UTF-8 header bytes, an emoji in the value.
RAW = ("t.events", 3, 41, 1.5, b"o4", '{"x":"\u00e9 \U0001f600"}'.encode(), [("h", b"\xff\x00"), ("n", None)])


def book(default: Policy = ORDERED, start="from_one", **by_type: Policy) -> PolicyBook:
    return PolicyBook(default=default, by_type={k.replace("_", "."): v for k, v in by_type.items()}, start=start)


def through_record(agg: Aggregate) -> Aggregate:
    """The aggregate as a restart recovers it from its changelog record."""
    return decode(encode(agg))


# --- the incident --------------------------------------------------------------


def test_incident_shipped_arriving_before_paid_is_applied_after_paid():
    d = Driver(book=book())
    assert d.deliver("order-42", ev(1, "order.created"), 0.0) is Verdict.APPLY
    assert d.deliver("order-42", ev(3, "order.shipped"), 0.1) is Verdict.BUFFERED
    assert [a.type for a in d.output["order-42"]] == ["order.created"]  # shipped waits
    assert d.deliver("order-42", ev(2, "order.paid"), 0.2) is Verdict.APPLY
    assert [a.type for a in d.output["order-42"]] == ["order.created", "order.paid", "order.shipped"]
    assert d.seqs("order-42") == [1, 2, 3]
    assert d.agg("order-42").seq.next_seq == 4


def test_incident_paid_first_in_a_fresh_aggregate_waits_for_nothing_else():
    d = Driver(book=book())
    d.deliver("order-7", ev(2, "order.paid"), 0.0)
    d.deliver("order-7", ev(3, "order.shipped"), 0.0)
    d.deliver("order-7", ev(1, "order.created"), 0.0)
    assert [a.type for a in d.output["order-7"]] == ["order.created", "order.paid", "order.shipped"]


# --- ordering basics ---------------------------------------------------------------


def test_in_order_event_applies_at_once():
    agg = Aggregate()
    assert receive(agg, ev(1), ORDERED, 0.0) is Verdict.APPLY
    assert len(agg.buffer) == 0
    applied(agg, ev(1), 0.0)
    assert agg.seq.next_seq == 2
    assert "id-1" in agg.seen


def test_event_ahead_is_buffered_with_its_record_and_arrival_time():
    agg = Aggregate()
    event = Incoming(3, "id-3", "t", record=RAW)
    assert receive(agg, event, ORDERED, 5.0) is Verdict.BUFFERED
    assert agg.buffer.get(3) == Buffered(3, "id-3", "t", 5.0, RAW)
    assert pop_ready(agg) is None  # 1 has not been applied


def test_buffered_events_drain_in_sequence_order_whatever_their_arrival_order():
    d = Driver()
    for seq in (5, 3, 4, 2):
        assert d.deliver("a", ev(seq), 0.0) is Verdict.BUFFERED
    d.deliver("a", ev(1), 0.0)
    assert d.seqs("a") == [1, 2, 3, 4, 5]
    assert len(d.agg("a").buffer) == 0


def test_drain_stops_at_the_next_missing_number():
    d = Driver()
    for seq in (2, 4, 5):
        d.deliver("a", ev(seq), 0.0)
    d.deliver("a", ev(1), 0.0)
    assert d.seqs("a") == [1, 2]
    assert sorted(d.agg("a").buffer.items) == [4, 5]
    d.deliver("a", ev(3), 0.0)
    assert d.seqs("a") == [1, 2, 3, 4, 5]


def test_aggregates_are_ordered_independently():
    d = Driver()
    d.deliver("a", ev(2), 0.0)
    d.deliver("b", ev(1), 0.0)
    d.deliver("b", ev(2), 0.0)
    assert d.seqs("a") == []
    assert d.seqs("b") == [1, 2]


# --- duplicates and conflicts -------------------------------------------------------


def test_redelivery_after_apply_is_duplicate():
    d = Driver()
    d.deliver("a", ev(1), 0.0)
    assert d.deliver("a", ev(1), 1.0) is Verdict.DUPLICATE
    assert d.seqs("a") == [1]


def test_redelivery_of_buffered_event_is_duplicate_and_keeps_the_first_copy():
    d = Driver()
    d.deliver("a", ev(2), 0.0)
    assert d.deliver("a", ev(2), 9.0) is Verdict.DUPLICATE
    assert d.agg("a").buffer.get(2).at == 0.0  # the gap clock was not restarted
    d.deliver("a", ev(1), 10.0)
    assert d.seqs("a") == [1, 2]


def test_different_event_with_buffered_sequence_number_is_conflict():
    d = Driver()
    d.deliver("a", ev(2, key="first"), 0.0)
    assert d.deliver("a", ev(2, key="second"), 1.0) is Verdict.CONFLICT
    assert d.agg("a").buffer.get(2).key == "first"
    d.deliver("a", ev(1), 2.0)
    assert d.keys("a") == ["id-1", "first"]


def test_event_without_sequence_applies_at_once_and_only_once():
    d = Driver()
    assert d.deliver("a", ev(None, key="k"), 0.0) is Verdict.APPLY
    assert d.deliver("a", ev(None, key="k"), 1.0) is Verdict.DUPLICATE
    assert d.output["a"] == [Applied(None, "k", "order.event")]
    assert d.agg("a").seq.next_seq is None  # numberless events do not touch the sequence


# --- late events ----------------------------------------------------------------------


def test_missing_event_arriving_after_gap_skip_is_late():
    d = Driver(book=book(STRICT))
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3), 0.0)
    d.tick(31.0)
    assert d.gaps["a"] == [Gap(2, 2)]
    assert d.deliver("a", ev(2), 32.0) is Verdict.LATE


def test_warn_late_event_is_applied_without_moving_the_sequence():
    d = Driver(book=book(WARN))
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3), 0.0)
    d.tick(31.0)
    assert d.deliver("a", ev(2), 32.0) is Verdict.LATE
    assert d.output["a"][-1] == Applied(2, "id-2", "order.event", late=True)
    assert d.agg("a").seq.next_seq == 4
    assert d.deliver("a", ev(2), 33.0) is Verdict.DUPLICATE  # applied late: now seen


def test_strict_late_event_is_rejected_and_not_applied():
    d = Driver(book=book(STRICT))
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3), 0.0)
    d.tick(31.0)
    d.deliver("a", ev(2), 32.0)
    assert d.seqs("a") == [1, 3]
    assert [(a, e.seq, v) for a, e, v in d.rejected] == [("a", 2, Verdict.LATE)]
    assert "id-2" not in d.agg("a").seen


def test_applied_event_redelivered_behind_the_sequence_is_duplicate_not_late():
    d = Driver()
    for seq in (1, 2, 3):
        d.deliver("a", ev(seq), 0.0)
    assert d.deliver("a", ev(1), 1.0) is Verdict.DUPLICATE


# --- gaps -------------------------------------------------------------------------------


def test_gap_is_not_due_until_the_timeout_has_strictly_passed():
    agg = Aggregate()
    receive(agg, ev(2), ORDERED, 10.0)
    assert not gap_due(agg, lambda t: ORDERED, 40.0)  # waited exactly 30 s
    assert expire_gap(agg, lambda t: ORDERED, 40.0) is None
    assert gap_due(agg, lambda t: ORDERED, 40.001)
    assert expire_gap(agg, lambda t: ORDERED, 40.001) == Gap(1, 1)


def test_gap_skip_records_the_missing_run_once_and_drains_the_rest():
    d = Driver()
    d.deliver("a", ev(1), 0.0)
    for seq in (5, 6):
        d.deliver("a", ev(seq), 1.0)
    d.tick(31.5)
    assert d.gaps["a"] == [Gap(2, 4)]
    assert Gap(2, 4).size == 3
    assert d.seqs("a") == [1, 5, 6]
    for later in (40.0, 100.0, 1e6):
        d.tick(later)
    assert d.gaps["a"] == [Gap(2, 4)]


def test_several_holes_are_skipped_one_gap_each_each_with_its_own_timeout():
    d = Driver()
    for seq in (2, 4, 7):
        d.deliver("a", ev(seq), 0.0)
    d.tick(31.0)
    assert d.gaps["a"] == [Gap(1, 1)]  # 3 may still come: its gap opened only now
    assert d.seqs("a") == [2]
    d.tick(60.0)
    assert d.gaps["a"] == [Gap(1, 1)]
    d.tick(61.5)
    d.tick(92.0)
    assert d.gaps["a"] == [Gap(1, 1), Gap(3, 3), Gap(5, 6)]
    assert d.seqs("a") == [2, 4, 7]
    assert d.agg("a").seq.next_seq == 8


def test_progress_restarts_the_wait_for_the_next_gap():
    """The chaos test's case: 7 waited long for 1..6; 1..4 and 6 came, and 5 is late by less
    than the timeout counted from that progress: it is not skipped."""
    d = Driver()
    d.deliver("a", ev(7), 0.0)
    for seq in (1, 2, 3, 4, 6):
        d.deliver("a", ev(seq), 25.0)
    d.tick(31.0)
    assert d.gaps.get("a", []) == []
    d.deliver("a", ev(5), 40.0)
    assert d.seqs("a") == [1, 2, 3, 4, 5, 6, 7]


def test_trailing_missing_numbers_are_never_a_gap():
    d = Driver()
    d.deliver("a", ev(1), 0.0)
    d.tick(1000.0)
    assert d.gaps == {}
    assert d.agg("a").seq.next_seq == 2


def test_gap_clock_starts_at_the_oldest_buffered_event():
    agg = Aggregate()
    receive(agg, ev(3), ORDERED, 0.0)
    receive(agg, ev(2), ORDERED, 20.0)  # a later arrival does not restart the clock
    assert not gap_due(agg, lambda t: ORDERED, 30.0)
    assert gap_due(agg, lambda t: ORDERED, 30.5)


def test_gap_timeout_of_the_waiting_event_type_decides():
    fast = Policy(gap_timeout=5.0)
    d = Driver(book=book(ORDERED, order_fast=fast))
    d.deliver("a", ev(2, "order.fast"), 0.0)
    d.deliver("b", ev(2, "order.slow"), 0.0)
    d.tick(6.0)
    assert d.gaps == {"a": [Gap(1, 1)]}
    d.tick(31.0)
    assert d.gaps == {"a": [Gap(1, 1)], "b": [Gap(1, 1)]}


def test_gap_policy_of_the_waiting_event_decides_not_an_unordered_placeholder():
    """An unordered event's 'number used' placeholder waits for nothing: the ordered
    event behind it decides the timeout and the gap policy (regression)."""
    careful = Policy(gap_timeout=30.0, gap_policy="park")
    hasty = Policy(ordering="unordered", gap_timeout=5.0, gap_policy="skip")
    d = Driver(book=book(careful, order_viewed=hasty))
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3, "order.viewed"), 0.0)  # unordered, ahead: marks 3 as used
    d.deliver("a", ev(5), 0.0)  # waits for 2 and 4
    d.tick(6.0)
    assert d.gaps == {} and d.parks == {}  # 6 s is not the ordered type's 30 s
    d.tick(31.0)
    assert d.gaps == {}
    assert d.parks["a"] == [Parked(2, "gap", 31.0)]  # the ordered type's park policy


def test_gaps_around_an_unordered_placeholder_are_separate_and_skip_its_number():
    d = Driver(book=book(ORDERED, order_viewed=UNORDERED))
    d.deliver("a", ev(3, "order.viewed"), 0.0)
    d.deliver("a", ev(5), 0.0)
    d.tick(31.0)
    assert d.gaps["a"] == [Gap(1, 2)]
    d.tick(62.0)  # 4's gap opened when 3 was stepped over: its own timeout
    assert d.gaps["a"] == [Gap(1, 2), Gap(4, 4)]
    assert d.seqs("a") == [3, 5]
    assert d.agg("a").seq.next_seq == 6


# --- gap_policy="park" ------------------------------------------------------------------


def test_gap_park_parks_with_reason_gap_and_holds_later_events():
    d = Driver(book=book(Policy(gap_timeout=30.0, gap_policy="park")))
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3), 0.0)
    d.tick(31.0)
    assert d.agg("a").seq.parked == Parked(2, "gap", 31.0)
    assert d.parks["a"] == [Parked(2, "gap", 31.0)]
    assert d.gaps == {}
    assert d.deliver("a", ev(4), 32.0) is Verdict.HELD
    assert d.seqs("a") == [1]


def test_missing_event_unparks_a_gap_parked_aggregate_and_drains_in_order():
    d = Driver(book=book(Policy(gap_timeout=30.0, gap_policy="park")))
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3), 0.0)
    d.tick(31.0)
    d.deliver("a", ev(4), 32.0)
    assert d.deliver("a", ev(2), 500.0) is Verdict.APPLY
    assert d.seqs("a") == [1, 2, 3, 4]
    assert d.agg("a").seq.parked is None
    assert d.agg("a").seq.next_seq == 5


def test_parked_aggregate_is_never_gap_expired_again():
    d = Driver(book=book(Policy(gap_timeout=30.0, gap_policy="park")))
    d.deliver("a", ev(2), 0.0)
    d.tick(31.0)
    assert not gap_due(d.agg("a"), d.policy, 1e9)
    d.tick(1e9)
    assert d.parks["a"] == [Parked(1, "gap", 31.0)]


# --- start policies -----------------------------------------------------------------------


def test_from_one_waits_for_sequence_one():
    d = Driver(book=book(start="from_one"))
    assert d.deliver("a", ev(7), 0.0) is Verdict.BUFFERED
    assert d.agg("a").seq.next_seq == 1
    assert d.seqs("a") == []


def test_from_first_seen_starts_at_the_first_seen_sequence():
    d = Driver(book=book(start="from_first_seen"))
    assert d.deliver("a", ev(7), 0.0) is Verdict.APPLY
    assert d.deliver("a", ev(9), 0.0) is Verdict.BUFFERED
    assert d.deliver("a", ev(8), 0.0) is Verdict.APPLY
    assert d.seqs("a") == [7, 8, 9]


def test_from_first_seen_earlier_number_after_the_start_is_late():
    d = Driver(book=book(STRICT, start="from_first_seen"))
    d.deliver("a", ev(7), 0.0)
    assert d.deliver("a", ev(6), 0.0) is Verdict.LATE


def test_from_first_seen_unordered_first_event_sets_the_start():
    d = Driver(book=book(ORDERED, start="from_first_seen", order_viewed=UNORDERED))
    d.deliver("a", ev(7, "order.viewed"), 0.0)
    assert d.agg("a").seq.next_seq == 8
    assert d.deliver("a", ev(8), 0.0) is Verdict.APPLY


# --- unordered -------------------------------------------------------------------------------


def test_unordered_event_applies_on_arrival_and_is_deduplicated():
    d = Driver(book=book(UNORDERED))
    assert d.deliver("a", ev(5), 0.0) is Verdict.APPLY
    assert d.deliver("a", ev(2), 0.0) is Verdict.APPLY
    assert d.deliver("a", ev(5), 1.0) is Verdict.DUPLICATE
    assert d.seqs("a") == [5, 2]


def test_unordered_event_ahead_marks_its_number_so_ordered_events_are_not_stuck():
    d = Driver(book=book(ORDERED, order_viewed=UNORDERED))
    d.deliver("a", ev(1), 0.0)
    assert d.deliver("a", ev(3, "order.viewed"), 0.0) is Verdict.APPLY
    assert d.agg("a").buffer.get(3).done
    assert d.deliver("a", ev(4), 0.0) is Verdict.BUFFERED
    assert d.deliver("a", ev(2), 0.0) is Verdict.APPLY
    assert d.seqs("a") == [1, 3, 2, 4]  # 3 ran on arrival; 4 did not wait for it again
    assert d.agg("a").seq.next_seq == 5
    assert len(d.agg("a").buffer) == 0
    d.tick(1000.0)
    assert d.gaps == {}


def test_unordered_event_first_on_a_new_aggregate_marks_its_number():
    """Regression: before any ordered event, next_seq was None, so the unordered
    event's number was not marked and the ordered event behind it waited for a
    gap timeout, then a false gap was recorded for a number that was applied."""
    d = Driver(book=book(ORDERED, order_viewed=UNORDERED))
    d.deliver("a", ev(2, "order.viewed"), 0.0)
    d.deliver("a", ev(1), 0.0)
    assert d.deliver("a", ev(3), 0.0) is Verdict.APPLY
    assert d.seqs("a") == [2, 1, 3]
    d.tick(1000.0)
    assert d.gaps == {}


def test_unordered_placeholders_alone_never_start_the_gap_clock():
    d = Driver(book=book(ORDERED, order_viewed=UNORDERED))
    d.deliver("a", ev(4, "order.viewed"), 0.0)
    assert d.agg("a").buffer.oldest_at() is None
    d.tick(1e6)
    assert d.gaps == {}
    assert d.agg("a").seq.next_seq == 1


def test_unordered_event_behind_the_sequence_does_not_move_it():
    d = Driver(book=book(ORDERED, order_viewed=UNORDERED))
    for seq in (1, 2, 3):
        d.deliver("a", ev(seq), 0.0)
    assert d.deliver("a", ev(2, "order.viewed", key="v"), 0.0) is Verdict.APPLY
    assert d.agg("a").seq.next_seq == 4
    assert len(d.agg("a").buffer) == 0


def test_failed_unordered_event_ahead_is_stepped_over():
    """Regression: an unordered event that failed ahead of the sequence left its number
    open, so ordered events behind it waited for a gap timeout and a false gap."""
    d = Driver(book=book(ORDERED, order_viewed=UNORDERED))
    d.fail_times["id-3"] = 1
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3, "order.viewed"), 0.0)
    assert [e.seq for _a, e, _r in d.dlq] == [3]
    d.deliver("a", ev(4), 0.0)
    d.deliver("a", ev(2), 0.0)
    assert d.seqs("a") == [1, 2, 4]
    assert d.agg("a").seq.parked is None
    d.tick(1000.0)
    assert d.gaps == {}
    d.replay(1001.0)  # the replay of an unordered event simply applies it
    assert d.seqs("a") == [1, 2, 4, 3]


def test_failed_unordered_event_at_the_head_is_stepped_over():
    d = Driver(book=book(ORDERED, order_viewed=UNORDERED))
    d.fail_times["id-2"] = 1
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3), 0.0)
    d.deliver("a", ev(2, "order.viewed"), 0.0)
    assert d.seqs("a") == [1, 3]
    assert d.agg("a").seq.next_seq == 4


# --- limits -----------------------------------------------------------------------------------


def test_full_reorder_buffer_overflows():
    d = Driver(limits=Limits(max_buffered=2))
    assert d.deliver("a", ev(2), 0.0) is Verdict.BUFFERED
    assert d.deliver("a", ev(3), 0.0) is Verdict.BUFFERED
    assert d.deliver("a", ev(4), 0.0) is Verdict.OVERFLOW
    assert 4 not in d.agg("a").buffer
    assert [e.seq for _a, e, _v in d.rejected] == [4]


def test_no_room_in_the_partition_overflows():
    d = Driver()
    assert d.deliver("a", ev(2), 0.0, room=False) is Verdict.OVERFLOW
    assert len(d.agg("a").buffer) == 0


def test_no_room_does_not_stop_an_in_order_event():
    d = Driver()
    assert d.deliver("a", ev(1), 0.0, room=False) is Verdict.APPLY
    assert d.seqs("a") == [1]


def test_overflowed_event_can_be_delivered_again_later():
    d = Driver(limits=Limits(max_buffered=1))
    d.deliver("a", ev(2), 0.0)
    assert d.deliver("a", ev(3), 0.0) is Verdict.OVERFLOW
    d.deliver("a", ev(1), 0.0)
    assert d.deliver("a", ev(3), 1.0) is Verdict.APPLY  # not seen: the overflow kept nothing
    assert d.seqs("a") == [1, 2, 3]


def test_seen_ids_are_bounded_by_max_seen_oldest_evicted():
    d = Driver(limits=Limits(max_seen=2))
    for seq in (1, 2, 3):
        d.deliver("a", ev(seq), float(seq))
    assert list(d.agg("a").seen.ids) == ["id-2", "id-3"]
    # The evicted ID is forgotten: its redelivery is no longer recognised as a duplicate.
    assert d.deliver("a", ev(1), 4.0) is Verdict.LATE
    assert d.deliver("a", ev(2), 4.0) is Verdict.DUPLICATE


def test_seen_ids_prune_forgets_ids_older_than_the_ttl():
    seen = SeenIds()
    for key, at in (("a", 0.0), ("b", 10.0), ("c", 20.0)):
        seen.add(key, at, 100)
    assert seen.prune(25.0, 15.0) == 1  # a is 25 s old; b, exactly 15 s old, stays
    assert list(seen.ids) == ["b", "c"]
    assert seen.prune(25.0, 15.0) == 0
    assert seen.prune(100.0, 15.0) == 2
    assert len(seen) == 0


def test_idle_after_the_ttl_with_nothing_held():
    d = Driver()
    d.deliver("a", ev(1), 100.0)
    agg = d.agg("a")
    assert not is_idle(agg, 150.0, 60.0)
    assert not is_idle(agg, 160.0, 60.0)  # exactly the TTL: not yet
    assert is_idle(agg, 160.5, 60.0)


def test_any_delivery_even_a_duplicate_keeps_the_aggregate_active():
    d = Driver()
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(1), 100.0)
    assert not is_idle(d.agg("a"), 150.0, 60.0)


def test_never_idle_while_buffered():
    d = Driver()
    d.deliver("a", ev(2), 0.0)
    assert not is_idle(d.agg("a"), 1e9, 60.0)


def test_never_idle_while_parked():
    d = Driver(book=book(Policy(gap_timeout=30.0, gap_policy="park")))
    d.deliver("a", ev(2), 0.0)
    d.tick(31.0)
    d.agg("a").buffer.drop_below(10)  # even with an empty buffer
    assert d.agg("a").seq.parked is not None
    assert not is_idle(d.agg("a"), 1e9, 60.0)


# --- failures, parking, replay, resolve ---------------------------------------------------------


def test_failed_ordered_event_parks_the_aggregate():
    agg = Aggregate()
    receive(agg, ev(1), ORDERED, 0.0)
    assert failed(agg, ev(1), ORDERED, "ValueError", 1.0) is True
    assert agg.seq.parked == Parked(1, "ValueError", 1.0)
    assert agg.seq.next_seq == 1
    assert "id-1" not in agg.seen


def test_failed_strict_event_parks_the_aggregate():
    agg = Aggregate()
    receive(agg, ev(1), STRICT, 0.0)
    assert failed(agg, ev(1), STRICT, "KeyError", 1.0) is True
    assert agg.seq.parked == Parked(1, "KeyError", 1.0)


def test_failed_warn_event_does_not_park_and_the_sequence_steps_over_it():
    d = Driver(book=book(WARN))
    d.fail_times["id-2"] = 1
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(3), 0.0)
    d.deliver("a", ev(2), 0.0)
    assert d.agg("a").seq.parked is None
    assert d.seqs("a") == [1, 3]  # 3 did not wait for the failed 2
    assert d.agg("a").seq.next_seq == 4
    assert d.gaps == {}


def test_events_after_a_failed_one_are_held():
    d = Driver()
    d.fail_times["id-2"] = 1
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(2), 0.0)
    assert d.deliver("a", ev(3), 0.0) is Verdict.HELD
    assert d.deliver("a", ev(4), 0.0) is Verdict.HELD
    assert d.seqs("a") == [1]
    assert pop_ready(d.agg("a")) is None  # parked: nothing is released


def test_failed_event_in_the_middle_of_a_drain_parks_and_stops_the_drain():
    d = Driver()
    d.fail_times["id-3"] = 1
    for seq in (4, 3, 2):
        d.deliver("a", ev(seq), 0.0)
    d.deliver("a", ev(1), 0.0)
    assert d.seqs("a") == [1, 2]
    assert d.agg("a").seq.parked == Parked(3, "Boom", 0.0)
    assert sorted(d.agg("a").buffer.items) == [4]


def test_replayed_failed_event_unparks_and_drains_in_order():
    d = Driver()
    d.fail_times["id-2"] = 1
    for seq in (1, 2, 4, 3, 5):
        d.deliver("a", ev(seq), 0.0)
    assert d.seqs("a") == [1]
    event = d.dlq[0][1]
    assert d.deliver("a", event, 10.0) is Verdict.APPLY  # same seq, same key
    assert d.seqs("a") == [1, 2, 3, 4, 5]
    assert d.agg("a").seq.parked is None
    assert d.agg("a").seq.next_seq == 6


def test_replay_that_fails_again_keeps_the_original_parking():
    d = Driver()
    d.fail_times["id-1"] = 2
    d.deliver("a", ev(1), 0.0)
    d.replay(5.0)
    assert d.agg("a").seq.parked == Parked(1, "Boom", 0.0)
    assert len(d.dlq) == 1
    d.replay(6.0)
    assert d.agg("a").seq.parked is None
    assert d.seqs("a") == [1]


def test_parked_aggregate_is_not_gap_expired_while_waiting_for_its_replay():
    d = Driver()
    d.fail_times["id-1"] = 1
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(2), 0.0)
    d.tick(1e6)
    assert d.gaps == {} and d.parks == {}
    assert d.agg("a").seq.parked == Parked(1, "Boom", 0.0)


def test_failed_late_event_does_not_park():
    agg = Aggregate()
    for seq in (1, 2):
        receive(agg, ev(seq), WARN, 0.0)
        applied(agg, ev(seq), 0.0)
    assert failed(agg, ev(1, key="other"), WARN, "Boom", 1.0) is False
    assert failed(agg, ev(1, key="other"), ORDERED, "Boom", 1.0) is False
    assert agg.seq.parked is None
    assert agg.seq.next_seq == 3


def test_resolve_drops_buffered_below_skip_to_returns_the_gap_and_unparks():
    d = Driver()
    d.fail_times["id-2"] = 1
    for seq in (1, 2, 3, 5, 6):
        d.deliver("a", ev(seq), 0.0)
    assert d.agg("a").seq.parked is not None
    gap, dropped = d.resolve("a", 5, 10.0)
    assert gap == Gap(2, 4)
    assert [b.seq for b in dropped] == [3]
    assert d.agg("a").seq.parked is None
    assert d.seqs("a") == [1, 5, 6]  # the binding drained from skip_to on
    assert d.agg("a").seq.next_seq == 7
    assert d.agg("a").seq.last_active == 10.0


def test_resolve_does_not_report_applied_unordered_placeholders_as_dropped():
    """Regression: resolve returned the 'number used' placeholders of unordered events
    (already applied, record None) among the dropped events for the binding to
    dead-letter."""
    d = Driver(book=book(ORDERED, order_viewed=UNORDERED))
    d.fail_times["id-2"] = 1
    d.deliver("a", ev(1), 0.0)
    d.deliver("a", ev(2), 0.0)  # fails: parks at 2
    d.deliver("a", Incoming(3, "id-3", "order.event", record=RAW), 0.0)  # held
    d.deliver("a", ev(4, "order.viewed"), 0.0)  # unordered: applied at once, marks 4
    assert d.seqs("a") == [1, 4]
    gap, dropped = d.resolve("a", 5, 1.0)
    assert gap == Gap(2, 4)
    assert dropped == [Buffered(3, "id-3", "order.event", 0.0, RAW)]
    assert all(not b.done and b.record is not None for b in dropped)
    assert len(d.agg("a").buffer) == 0
    assert d.agg("a").seq.next_seq == 5


def test_resolve_at_the_parked_number_unparks_without_a_gap():
    d = Driver()
    d.fail_times["id-2"] = 1
    for seq in (1, 2, 3):
        d.deliver("a", ev(seq), 0.0)
    gap, dropped = d.resolve("a", 2, 10.0)
    assert (gap, dropped) == (None, [])
    assert d.agg("a").seq.parked is None
    assert d.agg("a").seq.next_seq == 2
    assert d.deliver("a", d.dlq[0][1], 11.0) is Verdict.APPLY  # the replay still fits
    assert d.seqs("a") == [1, 2, 3]


def test_resolve_behind_the_sequence_never_moves_it_back():
    d = Driver()
    for seq in (1, 2, 3):
        d.deliver("a", ev(seq), 0.0)
    gap, dropped = d.resolve("a", 2, 1.0)
    assert (gap, dropped) == (None, [])
    assert d.agg("a").seq.next_seq == 4


def test_resolve_on_a_new_aggregate_skips_from_one():
    agg = Aggregate()
    gap, dropped = resolve(agg, 4, 0.0)
    assert gap == Gap(1, 3)
    assert dropped == []
    assert agg.seq.next_seq == 4


# --- serialization ---------------------------------------------------------------------------------


def test_parked_sequence_state_round_trips_through_its_record():
    agg = Aggregate(SequenceState(7, Parked(7, "gap", 12.5), 99.0))
    assert through_record(agg) == agg


def test_no_record_or_a_tombstone_gives_a_fresh_aggregate():
    assert decode(None) == Aggregate()
    assert decode(None).seq == SequenceState()


def test_done_placeholder_round_trips_through_its_record_and_still_steps_over():
    buf = ReorderBuffer()
    buf.put(Buffered(3, "v3", "order.viewed", 1.0, None, done=True))
    buf.put(Buffered(4, "o4", "order.event", 2.0, RAW))
    back = through_record(Aggregate(SequenceState(next_seq=3), buf, SeenIds()))
    assert back.buffer.items == buf.items
    assert pop_ready(back) == Buffered(4, "o4", "order.event", 2.0, RAW)


def test_restored_parked_aggregate_unparks_on_replay():
    d = Driver()
    d.fail_times["id-2"] = 1
    for seq in (1, 2, 3):
        d.deliver("a", ev(seq), 0.0)
    d.aggs["a"] = through_record(d.agg("a"))
    assert d.agg("a").seq.parked == Parked(2, "Boom", 0.0)
    assert d.deliver("a", ev(1), 1.0) is Verdict.DUPLICATE  # seen IDs survived
    d.replay(2.0)
    assert d.seqs("a") == [1, 2, 3]
