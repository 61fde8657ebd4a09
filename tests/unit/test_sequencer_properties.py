"""Property tests of the pure ordering core (tables/), driven as the binding drives it.

No I/O: a fake clock (plain float ``now`` values), the in-memory driver in _seqdriver.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tables.policy import Policy, PolicyBook
from tables.reorder import Buffered, ReorderBuffer
from tables.seen import SeenIds
from tables.sequence import Parked, SequenceState
from tables.sequencer import Aggregate, Gap, Incoming, Verdict
from tables.state import decode, encode
from tests.unit._seqdriver import Driver, ev, runs

TIMEOUT = 30.0
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -------------------------------------------------------------

agg_ids = st.integers(1, 8).map(lambda n: [f"agg-{i}" for i in range(n)])


@st.composite
def delayed_stream(draw, *, max_events=10, unordered_share=False):
    """Aggregates 1-8, each with events 1..n produced at non-decreasing times; every event
    delivered 1-3 times, each copy after its own delay < the gap timeout. Returned sorted by
    delivery time, ties in a drawn order: any interleaving and any duplication follow.

    Returns (deliveries [(time, agg, seq, type)], {agg: n}, {agg: {seq: type}}).
    """
    aggs = draw(agg_ids)
    deliveries = []
    counts: dict[str, int] = {}
    types: dict[str, dict[int, str]] = {}
    for agg in aggs:
        n = draw(st.integers(1, max_events))
        counts[agg] = n
        types[agg] = {}
        produced = 0.0
        for seq in range(1, n + 1):
            produced += draw(st.floats(0, 20, allow_nan=False))
            type_ = "order.event"
            if unordered_share and draw(st.booleans()):
                type_ = "order.viewed"  # unordered
            types[agg][seq] = type_
            for _copy in range(draw(st.integers(1, 3))):
                delay = draw(st.floats(0, TIMEOUT * 0.99, allow_nan=False))
                deliveries.append((produced + delay, agg, seq, type_))
    tiebreak = draw(st.permutations(range(len(deliveries))))
    order = sorted(range(len(deliveries)), key=lambda i: (deliveries[i][0], tiebreak[i]))
    return [deliveries[i] for i in order], counts, types


def run_with_timer(driver: Driver, deliveries) -> None:
    """Deliver in order; the gap timer runs right before and right after every delivery."""
    for now, agg, seq, type_ in deliveries:
        driver.tick(now)
        driver.deliver(agg, ev(seq, type_), now)
        driver.tick(now)


def assert_exactly_in_order(driver: Driver, agg: str, expected: list[int]) -> None:
    assert driver.seqs(agg) == expected
    assert driver.keys(agg) == [f"id-{s}" for s in expected]


# --- 1. reordering, duplication, delay < timeout: exactly 1..n, no gap -------


@SETTINGS
@given(delayed_stream(), st.sampled_from(["ordered", "strict", "warn"]))
def test_any_interleaving_duplication_and_short_delay_applies_exactly_one_to_n(stream, ordering):
    deliveries, counts, _types = stream
    driver = Driver(book=PolicyBook(default=Policy(ordering=ordering, gap_timeout=TIMEOUT)))
    run_with_timer(driver, deliveries)
    driver.tick(deliveries[-1][0] + 10 * TIMEOUT)  # long after: nothing left to expire

    assert driver.gaps == {}
    assert driver.parks == {}
    assert driver.rejected == []
    for agg, n in counts.items():
        assert_exactly_in_order(driver, agg, list(range(1, n + 1)))
        state = driver.agg(agg)
        assert state.seq.next_seq == n + 1
        assert len(state.buffer) == 0
        assert state.seq.parked is None
        # Every copy beyond the first is a duplicate; nothing is late or conflicting.
        verdicts = Counter(driver.verdicts_of(agg))
        copies = sum(1 for _t, a, _s, _ty in deliveries if a == agg)
        assert verdicts[Verdict.DUPLICATE] == copies - n
        assert verdicts[Verdict.APPLY] + verdicts[Verdict.BUFFERED] == n
        assert set(verdicts) <= {Verdict.APPLY, Verdict.BUFFERED, Verdict.DUPLICATE}


# --- 7. unordered events mixed in: each number once, ordered ones in order, none stuck


@SETTINGS
@given(delayed_stream(unordered_share=True))
def test_unordered_events_mixed_in_are_applied_once_and_never_leave_ordered_ones_stuck(stream):
    deliveries, counts, types = stream
    book = PolicyBook(
        default=Policy(gap_timeout=TIMEOUT),
        by_type={"order.viewed": Policy(ordering="unordered", gap_timeout=TIMEOUT)},
    )
    driver = Driver(book=book)
    run_with_timer(driver, deliveries)
    driver.tick(deliveries[-1][0] + 10 * TIMEOUT)

    assert driver.gaps == {}
    assert driver.parks == {}
    assert driver.rejected == []
    for agg, n in counts.items():
        seqs = driver.seqs(agg)
        assert sorted(seqs) == list(range(1, n + 1))  # each number applied exactly once
        ordered = [s for s in seqs if types[agg][s] == "order.event"]
        assert ordered == sorted(ordered)
        assert driver.agg(agg).seq.next_seq == n + 1
        assert len(driver.agg(agg).buffer) == 0


# --- 2. missing numbers: each hole recorded once, everything delivered applied once


@st.composite
def stream_with_holes(draw, *, max_events=12):
    """Aggregates 1-8 with events 1..n, some numbers never sent; the rest delivered 1-3
    times in any interleaving, all within less than the gap timeout."""
    aggs = draw(agg_ids)
    deliveries = []
    sent: dict[str, set[int]] = {}
    for agg in aggs:
        n = draw(st.integers(1, max_events))
        dropped = draw(st.sets(st.integers(1, n), max_size=n))
        sent[agg] = set(range(1, n + 1)) - dropped
        for seq in sorted(sent[agg]):
            for _copy in range(draw(st.integers(1, 3))):
                deliveries.append((agg, seq))
    deliveries = draw(st.permutations(deliveries))
    times = sorted(draw(st.lists(st.floats(0, TIMEOUT * 0.9), min_size=len(deliveries), max_size=len(deliveries))))
    return [(t, a, s) for t, (a, s) in zip(times, deliveries, strict=True)], sent


@SETTINGS
@given(stream_with_holes(), st.lists(st.floats(0, 1000), min_size=1, max_size=5))
def test_missing_numbers_are_each_recorded_once_as_a_gap_and_nothing_else_is_skipped(stream, later):
    deliveries, sent = stream
    driver = Driver(book=PolicyBook(default=Policy(gap_timeout=TIMEOUT, gap_policy="skip")))
    for now, agg, seq in deliveries:
        driver.tick(now)
        driver.deliver(agg, ev(seq), now)
    assert driver.gaps == {}  # nothing has waited long enough yet

    now = TIMEOUT * 0.9 + 0.5  # the last delivery was at most at 0.9 * TIMEOUT
    for step in later:  # the timer runs many more times, ever later
        now += TIMEOUT + step
        driver.tick(now)
    driver.settle(now + TIMEOUT + 1, TIMEOUT)  # each gap times out on its own

    for agg, numbers in sent.items():
        top = max(numbers, default=0)
        expected_gaps = runs(set(range(1, top)) - numbers)  # trailing holes wait for nothing
        assert driver.gaps.get(agg, []) == expected_gaps
        assert_exactly_in_order(driver, agg, sorted(numbers))
        assert len(driver.agg(agg).buffer) == 0
        if numbers:
            assert driver.agg(agg).seq.next_seq == top + 1
    assert driver.rejected == []


@SETTINGS
@given(stream_with_holes(), st.data())
def test_missing_events_arriving_after_their_gap_are_late_and_never_regap(stream, data):
    """5. After a skip, the missing event is LATE: warn applies it (no sequence move), strict
    refuses it; either way no gap is recorded twice and nothing is applied twice."""
    deliveries, sent = stream
    ordering = data.draw(st.sampled_from(["warn", "strict"]))
    driver = Driver(book=PolicyBook(default=Policy(ordering=ordering, gap_timeout=TIMEOUT)))
    for now, agg, seq in deliveries:
        driver.deliver(agg, ev(seq), now)
    now = driver.settle(TIMEOUT * 2, TIMEOUT)
    gaps_before = {a: list(g) for a, g in driver.gaps.items()}
    next_before = {a: driver.agg(a).seq.next_seq for a in sent}

    skipped = [(a, s) for a, gaps in gaps_before.items() for g in gaps for s in range(g.first, g.last + 1)]
    late = data.draw(st.permutations(skipped))
    for agg, seq in late:
        now += TIMEOUT * 3
        assert driver.deliver(agg, ev(seq), now) is Verdict.LATE
        assert driver.deliver(agg, ev(seq), now) is (Verdict.DUPLICATE if ordering == "warn" else Verdict.LATE)
        driver.tick(now)

    assert driver.gaps == gaps_before
    assert {a: driver.agg(a).seq.next_seq for a in sent} == next_before
    for agg, numbers in sent.items():
        out = driver.output.get(agg, [])
        in_order = [a.seq for a in out if not a.late]
        assert in_order == sorted(numbers)
        late_applied = [a.seq for a in out if a.late]
        if ordering == "warn":
            assert late_applied == [s for a, s in late if a == agg]
        else:
            assert late_applied == []
    if ordering == "strict":
        assert [(a, e.seq) for a, e, _v in driver.rejected] == [(a, s) for a, s in late for _twice in range(2)]


# --- 3. gap_policy="park" ----------------------------------------------------


@SETTINGS
@given(
    st.integers(2, 12).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(st.integers(1, n - 1), min_size=1),  # at least one hole with a waiter
            st.integers(0, 4),  # later events, delivered while parked
        )
    ),
    st.data(),
)
def test_park_gap_policy_holds_later_events_until_the_missing_one_arrives(params, data):
    n, missing, extra = params
    agg = "agg"
    driver = Driver(book=PolicyBook(default=Policy(gap_timeout=TIMEOUT, gap_policy="park")))
    present = data.draw(st.permutations(sorted(set(range(1, n + 1)) - missing)))
    for i, seq in enumerate(present):
        driver.deliver(agg, ev(seq), i * 0.01)

    now = TIMEOUT + 1
    driver.tick(now)
    first_hole = min(missing)
    assert driver.parks[agg] == [Parked(first_hole, "gap", now)]
    assert driver.agg(agg).seq.parked == Parked(first_hole, "gap", now)
    assert driver.seqs(agg) == list(range(1, first_hole))
    driver.tick(now + 1000)  # a parked aggregate is not parked again, nor skipped
    assert len(driver.parks[agg]) == 1

    for seq in range(n + 1, n + 1 + extra):
        assert driver.deliver(agg, ev(seq), now) is Verdict.HELD

    # The missing events arrive in any order, the timer running between them.
    for seq in data.draw(st.permutations(sorted(missing))):
        now += TIMEOUT + 1
        parked = driver.agg(agg).seq.parked
        next_seq = driver.agg(agg).seq.next_seq
        verdict = driver.deliver(agg, ev(seq), now)
        if (parked is not None and parked.seq == seq) or (parked is None and seq == next_seq):
            assert verdict is Verdict.APPLY
        else:
            assert verdict in (Verdict.HELD, Verdict.BUFFERED)
        driver.tick(now)

    assert driver.gaps == {}
    assert_exactly_in_order(driver, agg, list(range(1, n + 1 + extra)))
    assert all(p.reason == "gap" and p.seq in missing for p in driver.parks[agg])
    assert driver.agg(agg).seq.parked is None
    assert len(driver.agg(agg).buffer) == 0


# --- 9. failures: parking, replay, stepping over ------------------------------


@SETTINGS
@given(
    delayed_stream(max_events=8),
    st.sampled_from(["ordered", "strict"]),
    st.data(),
)
def test_failed_events_park_and_their_replay_keeps_order(stream, ordering, data):
    deliveries, counts, _types = stream
    driver = Driver(book=PolicyBook(default=Policy(ordering=ordering, gap_timeout=TIMEOUT)))
    for agg, n in counts.items():
        for seq in range(1, n + 1):
            driver.fail_times[f"id-{seq}@{agg}"] = data.draw(st.integers(0, 2), label="fails")

    def key_for(agg, seq):
        return f"id-{seq}@{agg}"

    now = 0.0
    for now, agg, seq, type_ in deliveries:
        driver.deliver(agg, Incoming(seq, key_for(agg, seq), type_), now)
        agg_state = driver.agg(agg)
        if agg_state.seq.parked is not None:  # while parked, nothing behind it runs
            assert agg_state.seq.next_seq == agg_state.seq.parked.seq
        if data.draw(st.booleans(), label="replay now"):
            driver.replay(now)
    budget = sum(driver.fail_times.values()) + 1  # each pass spends at least one failure
    for _round in range(budget):
        if not driver.dlq:
            break
        driver.replay(now)
    driver.tick(now + TIMEOUT * 10)

    assert driver.dlq == []
    assert driver.gaps == {}
    for agg, n in counts.items():
        assert driver.seqs(agg) == list(range(1, n + 1))
        assert driver.keys(agg) == [key_for(agg, s) for s in range(1, n + 1)]
        assert driver.agg(agg).seq.parked is None
        assert len(driver.agg(agg).buffer) == 0


@SETTINGS
@given(st.integers(1, 12), st.data())
def test_warn_failures_step_over_and_their_replay_is_applied_late(n, data):
    agg = "agg"
    driver = Driver(book=PolicyBook(default=Policy(ordering="warn", gap_timeout=TIMEOUT)))
    failing = data.draw(st.sets(st.integers(1, n)))
    for seq in failing:
        driver.fail_times[f"id-{seq}"] = 1
    for i, seq in enumerate(data.draw(st.permutations(range(1, n + 1)))):
        driver.deliver(agg, ev(seq), i * 0.1)
        assert driver.agg(agg).seq.parked is None  # warn never parks

    in_order = [a.seq for a in driver.output.get(agg, [])]
    assert in_order == [s for s in range(1, n + 1) if s not in failing]
    assert driver.agg(agg).seq.next_seq == n + 1
    assert sorted(e.seq for _a, e, _r in driver.dlq) == sorted(failing)

    driver.replay(100.0)
    out = driver.output.get(agg, [])
    assert sorted(a.seq for a in out if a.late) == sorted(failing)
    assert sorted(a.seq for a in out) == list(range(1, n + 1))  # each applied exactly once
    assert driver.agg(agg).seq.next_seq == n + 1
    assert driver.gaps == {}


# --- 6. start policies ---------------------------------------------------------


@SETTINGS
@given(st.integers(1, 10**6), st.integers(1, 10), st.integers(1, 3))
def test_from_first_seen_starts_at_the_first_number_it_sees(first, n, copies):
    driver = Driver(book=PolicyBook(start="from_first_seen"))
    for seq in range(first, first + n):
        for _ in range(copies):
            driver.deliver("agg", ev(seq), 0.0)
    assert_exactly_in_order(driver, "agg", list(range(first, first + n)))
    assert driver.agg("agg").seq.next_seq == first + n
    if first > 1:
        assert driver.deliver("agg", ev(first - 1), 1.0) is Verdict.LATE


@SETTINGS
@given(st.integers(2, 10**6), st.integers(1, 5))
def test_from_one_waits_for_one_whatever_arrives_first(first, n):
    driver = Driver(book=PolicyBook(start="from_one"))
    for seq in range(first, first + n):
        assert driver.deliver("agg", ev(seq), 0.0) is Verdict.BUFFERED
    assert driver.seqs("agg") == []
    assert driver.agg("agg").seq.next_seq == 1


# --- 8. limits -------------------------------------------------------------------


@SETTINGS
@given(st.lists(st.text(min_size=1, max_size=6), unique=True, max_size=40), st.integers(1, 20))
def test_seen_ids_keep_only_the_newest_max_ids(keys, max_ids):
    seen = SeenIds()
    for i, key in enumerate(keys):
        seen.add(key, float(i), max_ids)
        assert len(seen) <= max_ids
    kept = keys[-max_ids:]
    assert list(seen.ids) == kept
    assert all(k in seen for k in kept)
    assert not any(k in seen for k in keys[: len(keys) - len(kept)])


@SETTINGS
@given(
    st.lists(st.floats(0, 100, allow_nan=False), max_size=40),
    st.floats(0, 200, allow_nan=False),
    st.floats(0, 100, allow_nan=False),
)
def test_seen_ids_prune_forgets_exactly_the_ids_older_than_the_ttl(steps, extra, ttl):
    seen = SeenIds()
    now = 0.0
    times = []
    for i, step in enumerate(steps):
        now += step
        times.append(now)
        seen.add(f"k{i}", now, 10_000)
    now += extra
    dropped = seen.prune(now, ttl)
    expected = {f"k{i}": t for i, t in enumerate(times) if now - t <= ttl}
    assert seen.ids == expected
    assert dropped == len(times) - len(expected)


@SETTINGS
@given(st.integers(1, 20), st.integers(0, 30))
def test_buffer_never_grows_past_max_buffered(max_buffered, ahead):
    from tables.sequencer import Limits

    driver = Driver(limits=Limits(max_buffered=max_buffered))
    verdicts = [driver.deliver("agg", ev(seq), 0.0) for seq in range(2, 2 + ahead)]
    assert len(driver.agg("agg").buffer) == min(ahead, max_buffered)
    assert verdicts == [Verdict.BUFFERED] * min(ahead, max_buffered) + [Verdict.OVERFLOW] * max(0, ahead - max_buffered)
    driver.deliver("agg", ev(1), 1.0)  # the head still applies and drains all that was kept
    assert driver.seqs("agg") == list(range(1, 2 + min(ahead, max_buffered)))


# --- 10. the state record: round trip, size bound ---------------------------------

times = st.floats(0, 2e9, allow_nan=False, allow_infinity=False)
parked = st.builds(Parked, st.integers(1, 2**53), st.sampled_from(["gap", "Boom", "ValueError"]), times)
states = st.builds(SequenceState, st.none() | st.integers(1, 2**53), st.none() | parked, times)
any_text = st.text(max_size=12)  # any code point but lone surrogates: emoji, CJK, NUL...
raw_records = st.tuples(
    any_text,
    st.integers(0, 1024),
    st.integers(0, 2**62),
    st.none() | times,
    st.none() | st.binary(max_size=16),
    st.none() | st.binary(max_size=64) | any_text.map(str.encode),
    st.lists(st.tuples(any_text, st.none() | st.binary(max_size=8)), max_size=4),
)
buffered = st.builds(
    Buffered,
    st.integers(1, 2**53),
    st.text(min_size=1, max_size=12),
    st.text(min_size=1, max_size=12),
    times,
    st.none() | raw_records,
    st.booleans(),
)
aggregates = st.builds(
    Aggregate,
    states,
    st.lists(buffered, max_size=8, unique_by=lambda b: b.seq).map(lambda es: ReorderBuffer({b.seq: b for b in es})),
    st.dictionaries(any_text, times, max_size=20).map(SeenIds),
)


@SETTINGS
@given(aggregates)
def test_an_aggregate_survives_its_record_in_full_and_in_order(agg):
    back = decode(encode(agg))
    assert back == agg
    assert list(back.seen.ids) == list(agg.seen.ids)  # order is age: eviction depends on it
    assert list(back.buffer.items) == list(agg.buffer.items)
    assert back.buffer.oldest_at() == agg.buffer.oldest_at()


@SETTINGS
@given(aggregates)
def test_the_encoded_record_never_exceeds_the_size_the_core_bounds(agg):
    assert len(encode(agg)) <= agg.nbytes
    assert agg.buffer.nbytes == sum(b.nbytes for b in agg.buffer.items.values())


@SETTINGS
@given(stream_with_holes(max_events=8), st.data())
def test_state_restored_from_its_record_mid_stream_behaves_like_the_original(stream, data):
    """Persist every aggregate's record mid-stream, restore, and finish: the outcome is the
    same as never having restarted (the state is fully captured by its one record)."""
    deliveries, _sent = stream
    cut = data.draw(st.integers(0, len(deliveries)))
    book = PolicyBook(default=Policy(gap_timeout=TIMEOUT, gap_policy=data.draw(st.sampled_from(["skip", "park"]))))
    straight, restarted = Driver(book=book), Driver(book=book)
    for now, agg, seq in deliveries[:cut]:
        straight.deliver(agg, ev(seq), now)
        restarted.deliver(agg, ev(seq), now)
    restarted.aggs = {agg_id: decode(encode(a)) for agg_id, a in restarted.aggs.items()}
    for d in (straight, restarted):
        for now, agg, seq in deliveries[cut:]:
            d.deliver(agg, ev(seq), now)
        d.tick(TIMEOUT * 5)
    assert restarted.output == straight.output
    assert restarted.gaps == straight.gaps
    assert restarted.parks == straight.parks
    assert [v for _a, _e, v in restarted.verdicts] == [v for _a, _e, v in straight.verdicts]


def test_gap_size_counts_both_ends():
    assert Gap(3, 3).size == 1
    assert Gap(2, 5).size == 4
