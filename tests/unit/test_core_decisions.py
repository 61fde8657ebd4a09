"""Properties of the core's decisions (tables.sequencer.decide, tables.timers), driven
through the same entry points the binding calls, with a fake clock.

Covers what used to be decided in the binding: warn-late apply, conflicts, overflow
(dead_letter and skip_gap), buffer byte limits, operator resolve; and the invariants:
the next expected sequence never moves backwards, and a state record never outgrows
its byte limit.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tables.policy import Policy, PolicyBook
from tables.sequencer import Action, Incoming, Limits, Verdict, decide
from tables.state import Aggregate, encode
from tables.timers import Refused, Resolved, expire_idle, resolve_request
from tests.unit._seqdriver import Driver

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMEOUT = 30.0
ORDERINGS = st.sampled_from(["ordered", "strict", "warn", "unordered"])


def raw(seq: int, size: int) -> tuple:
    return ("t.events", 0, seq, 1.0, b"agg", b"\xf0\x9f\x98\x80" * (size // 4), [("h\u00e9", b"\xff" * 3)])


def event(seq: int, key: str | None = None, size: int = 100, type_: str = "t.x") -> Incoming:
    return Incoming(seq, key or f"id-{seq}", type_, raw(seq, size))


# --- operations on one aggregate, drawn at random --------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.integers(1, 30), st.integers(0, 2), st.integers(0, 3000), ORDERINGS),
        st.tuples(st.just("fail_next"), st.integers(1, 30)),
        st.tuples(st.just("tick"), st.floats(0, 100)),
        st.tuples(st.just("resolve"), st.one_of(st.integers(-3, 40), st.text(max_size=3), st.none(), st.floats())),
        st.tuples(st.just("ttl"), st.floats(0, 200)),
    ),
    max_size=60,
)


@SETTINGS
@given(ops, st.sampled_from(["dead_letter", "skip_gap"]), st.sampled_from(["skip", "park"]), st.data())
def test_next_sequence_never_moves_backwards_and_records_stay_under_their_limit(steps, overflow, gap_policy, data):
    max_bytes = data.draw(st.sampled_from([10_000, 20_000, 900_000]))
    limits = Limits(
        max_buffered=data.draw(st.integers(1, 12)), max_seen=50, max_record_bytes=max_bytes, overflow=overflow
    )
    book = PolicyBook(
        default=Policy(gap_timeout=TIMEOUT, gap_policy=gap_policy),
        by_type={
            o: Policy(ordering=o, gap_timeout=TIMEOUT, gap_policy=gap_policy) for o in ("strict", "warn", "unordered")
        },
    )
    d = Driver(book=book, limits=limits)
    now, last_next = 0.0, 0
    for step in steps:
        kind = step[0]
        if kind == "event":
            _, seq, copy, size, ordering = step
            d.deliver("a", Incoming(seq, f"id-{seq}-{copy}", ordering, raw(seq, size)), now)
        elif kind == "fail_next":
            d.fail_times[f"id-{step[1]}-0"] = 1
        elif kind == "tick":
            now += step[1]
            d.tick(now)
        elif kind == "resolve":
            d.resolve("a", step[1], now)
        else:
            now += step[1]
            expire_idle(d.agg("a"), now, 60.0)
        agg = d.agg("a")
        current = agg.seq.next_seq or 0
        assert current >= last_next, f"next sequence moved back from {last_next} to {current} after {step}"
        last_next = current
        assert len(encode(agg)) <= max_bytes
        assert agg.buffer.nbytes <= limits.max_buffer_bytes
        assert len(agg.buffer) <= limits.max_buffered + sum(1 for b in agg.buffer.items.values() if b.done)


# --- warn, late, conflict -------------------------------------------------------------


@SETTINGS
@given(st.sampled_from(["ordered", "strict", "warn"]), st.integers(2, 20), st.data())
def test_a_late_event_runs_under_warn_and_is_dead_lettered_otherwise_and_the_sequence_stays(ordering, n, data):
    d = Driver(book=PolicyBook(default=Policy(ordering=ordering, gap_timeout=TIMEOUT)))
    d.deliver("a", event(1), 0.0)
    d.deliver("a", event(n + 1), 0.0)
    d.tick(TIMEOUT + 1)  # gives up on 2..n
    late = data.draw(st.integers(2, n))
    next_before = d.agg("a").seq.next_seq
    decision = decide(d.agg("a"), event(late), d.policy("t.x"), TIMEOUT + 2, d.rules)
    assert decision.verdict is Verdict.LATE
    assert decision.action is (Action.RUN if ordering == "warn" else Action.DEAD_LETTER)
    assert str(late) in decision.reason
    assert d.agg("a").seq.next_seq == next_before


@SETTINGS
@given(st.integers(2, 30), st.text(min_size=1, max_size=5))
def test_another_event_claiming_a_held_number_is_a_conflict_and_changes_nothing(seq, other):
    d = Driver()
    d.deliver("a", event(seq), 0.0)
    held = dict(d.agg("a").buffer.items)
    decision = decide(d.agg("a"), event(seq, key=f"other-{other}"), d.policy("t.x"), 1.0, d.rules)
    assert (decision.verdict, decision.action) == (Verdict.CONFLICT, Action.DEAD_LETTER)
    assert d.agg("a").buffer.items == held
    same = decide(d.agg("a"), event(seq), d.policy("t.x"), 1.0, d.rules)
    assert (same.verdict, same.action) == (Verdict.DUPLICATE, Action.SKIP)


# --- overflow and byte limits ---------------------------------------------------------


@SETTINGS
@given(st.lists(st.integers(0, 6000), min_size=1, max_size=40), st.integers(10_000, 40_000))
def test_the_buffer_is_bounded_by_encoded_bytes_and_overflow_is_dead_lettered(sizes, max_bytes):
    limits = Limits(max_record_bytes=max_bytes)
    d = Driver(limits=limits)
    for i, size in enumerate(sizes):
        seq = i + 2  # all ahead of 1: every one is buffered or overflows
        before = d.agg("a").buffer.nbytes
        verdict = d.deliver("a", event(seq, size=size), 0.0)
        fits = (
            before + d.agg("a").buffer.get(seq).nbytes <= limits.max_buffer_bytes
            if verdict is Verdict.BUFFERED
            else None
        )
        assert verdict in (Verdict.BUFFERED, Verdict.OVERFLOW)
        assert fits in (True, None)
        assert len(encode(d.agg("a"))) <= max_bytes
    overflowed = [e.seq for _a, e, v in d.rejected if v is Verdict.OVERFLOW]
    assert sorted(overflowed + list(d.agg("a").buffer.items)) == [i + 2 for i in range(len(sizes))]
    d.deliver("a", event(1), 1.0)  # the head applies and drains everything kept, in order
    expected = [1]
    while expected[-1] + 1 <= len(sizes) + 1 and expected[-1] + 1 not in overflowed:
        expected.append(expected[-1] + 1)
    assert d.seqs("a") == expected  # up to the first number that overflowed: that one is a gap now


@SETTINGS
@given(st.integers(1, 6), st.lists(st.integers(2, 40), min_size=1, max_size=30, unique=True))
def test_skip_gap_overflow_gives_up_the_oldest_gap_instead_of_dead_lettering(max_buffered, seqs):
    d = Driver(limits=Limits(max_buffered=max_buffered, overflow="skip_gap"))
    for seq in seqs:
        d.deliver("a", event(seq), 0.0)
    assert not [e for _a, e, v in d.rejected if v is Verdict.OVERFLOW]
    assert len(d.agg("a").buffer) <= max_buffered
    applied = d.seqs("a")
    assert applied == sorted(applied)  # still in order, holes given up on as gaps
    for gap in d.gaps.get("a", []):
        assert not set(range(gap.first, gap.last + 1)) & set(applied)


def test_partition_without_room_overflows_even_when_the_aggregate_has_room():
    d = Driver()
    assert d.deliver("a", event(3), 0.0, room=False) is Verdict.OVERFLOW
    assert "partition" in d.decisions[-1][2].reason


# --- resolve --------------------------------------------------------------------------


@SETTINGS
@given(
    st.one_of(st.integers(-5, 50), st.text(max_size=4), st.none(), st.floats(), st.booleans(), st.lists(st.integers()))
)
def test_resolve_refuses_anything_but_a_sequence_number_and_never_raises(skip_to):
    agg = Aggregate()
    outcome = resolve_request(agg, {"skip_to": skip_to}, 0.0, max_sequence=40)
    valid = type(skip_to) is int and 1 <= skip_to <= 40
    assert isinstance(outcome, Resolved if valid else Refused)
    if valid:
        assert agg.seq.next_seq == max(1, skip_to)


@SETTINGS
@given(st.one_of(st.none(), st.text(), st.integers(), st.lists(st.integers())))
def test_a_resolve_request_that_is_not_an_object_is_refused(request):
    assert isinstance(resolve_request(Aggregate(), request, 0.0, 100), Refused)
