"""The scanner behind ``seqguard scan`` (tables/scan.py), fed streams built from a known truth.

A ground truth is, per aggregate: the numbers it has (runs separated by holes, some of them
huge), which events arrive late (each put after an event with a higher number, so it is out
of order, and nothing else is), and copies of events put after their original (duplicates).
Aggregates are placed on partitions, each partition's log interleaves its aggregates, and
the scanner reads the partitions interleaved at random, as a consumer does. The report must
give exactly what was put in.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tables.scan import (
    CONFLICT,
    DUPLICATE,
    MAX_EXAMPLES,
    OUT_OF_ORDER,
    Observation,
    Scanner,
    SinceGate,
    gaps_of,
    reason_of,
)
from tables.times import parse_since

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Truth:
    aggregate: str
    partition: int
    numbers: list[int]  # present, ascending
    holes: list[tuple[int, int]]  # missing, inclusive, between the lowest and the highest
    late: set[int] = field(default_factory=set)
    stream: list[tuple[int, str]] = field(default_factory=list)  # (sequence, id) in log order
    copies: int = 0


@st.composite
def truths(draw: st.DrawFn) -> tuple[list[Truth], random.Random]:
    rng = draw(st.randoms(use_true_random=False))
    partitions = draw(st.integers(1, 4))
    out = []
    for a in range(draw(st.integers(1, 6))):
        runs = draw(st.lists(st.tuples(st.integers(1, 6), st.integers(1, 10**12)), min_size=1, max_size=5))
        n = draw(st.integers(1, 10**15))
        numbers: list[int] = []
        holes: list[tuple[int, int]] = []
        for i, (length, hole) in enumerate(runs):
            numbers.extend(range(n, n + length))
            n += length
            if i < len(runs) - 1:
                holes.append((n, n + hole - 1))
                n += hole
        truth = Truth(f"agg-{a}", rng.randrange(partitions), numbers, holes)
        # Late events: any but the highest, each put after some event with a higher number.
        rate = draw(st.sampled_from([0.0, 0.2, 0.6]))
        truth.late = {s for s in numbers[:-1] if rng.random() < rate}
        base = [s for s in numbers if s not in truth.late]
        stream = [(s, f"{truth.aggregate}-{s}") for s in base]
        for s in sorted(truth.late):
            first_higher = next(i for i, (b, _) in enumerate(stream) if b > s)
            stream.insert(rng.randint(first_higher + 1, len(stream)), (s, f"{truth.aggregate}-{s}"))
        # Duplicates: copies put anywhere after their original.
        for _ in range(draw(st.integers(0, 4))):
            i = rng.randrange(len(stream))
            stream.insert(rng.randint(i + 1, len(stream)), stream[i])
            truth.copies += 1
        truth.stream = stream
        out.append(truth)
    return out, rng


def merge(queues: list[list], rng: random.Random) -> list:
    """A random interleaving that keeps each queue's order."""
    queues = [list(q) for q in queues if q]
    out = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return out


def observations(truth: list[Truth], rng: random.Random) -> list[Observation]:
    """Each partition's log interleaves its aggregates; the reader interleaves the partitions."""
    logs: dict[int, list[Observation]] = {}
    for p in sorted({t.partition for t in truth}):
        entries = merge([[(t.aggregate, s, i) for s, i in t.stream] for t in truth if t.partition == p], rng)
        logs[p] = [Observation(agg, s, f"src\x1f{i}", p, off, 1_000.0 + off) for off, (agg, s, i) in enumerate(entries)]
    return merge(list(logs.values()), rng)


def scan(obs: list[Observation]) -> Scanner:
    scanner = Scanner()
    for o in obs:
        scanner.observe(o)
    return scanner


@SETTINGS
@given(truths())
def test_a_shuffled_duplicated_holed_stream_gives_exactly_what_was_put_in(
    drawn: tuple[list[Truth], random.Random],
) -> None:
    truth, rng = drawn
    scanner = scan(observations(truth, rng))
    for t in truth:
        got = scanner.aggregate(t.aggregate)
        assert got is not None
        assert got.out_of_order == len(t.late)
        assert got.duplicates == t.copies
        assert got.conflicts == 0
        assert got.gaps == tuple(t.holes)
        assert got.missing == sum(b - a + 1 for a, b in t.holes)
        assert (got.first_sequence, got.last_sequence) == (t.numbers[0], t.numbers[-1])
        assert got.count == len(t.stream)
        assert got.partitions == (t.partition,)
        assert not got.split
        assert len(got.examples) == min(MAX_EXAMPLES, len(t.late) + t.copies)
    totals = scanner.report().totals
    assert totals.aggregates == len(truth)
    assert totals.events == sum(len(t.stream) for t in truth)
    assert totals.out_of_order == sum(len(t.late) for t in truth)
    assert totals.duplicates == sum(t.copies for t in truth)
    assert totals.gap_ranges == sum(len(t.holes) for t in truth)
    assert totals.missing == sum(b - a + 1 for t in truth for a, b in t.holes)
    assert totals.split_aggregates == totals.undecodable == totals.conflicts == 0
    assert totals.findings == any(t.late or t.copies or t.holes for t in truth)


@SETTINGS
@given(truths())
def test_an_in_order_stream_without_holes_reports_nothing(drawn: tuple[list[Truth], random.Random]) -> None:
    truth, rng = drawn
    for t in truth:  # the same aggregates, every number from the lowest to the highest, in order, once
        lo = t.numbers[0]
        t.stream = [(s, f"{t.aggregate}-{s}") for s in range(lo, lo + len(t.numbers))]
    report = scan(observations(truth, rng)).report()
    assert not report.findings
    assert report.aggregates == ()
    assert report.totals.events == sum(len(t.numbers) for t in truth)
    assert report.totals.aggregates_with_findings == 0


@SETTINGS
@given(truths(), st.randoms(use_true_random=False))
def test_gaps_and_duplicates_do_not_depend_on_the_order(
    drawn: tuple[list[Truth], random.Random], shuffler: random.Random
) -> None:
    truth, rng = drawn
    obs = observations(truth, rng)
    shuffled = list(obs)
    shuffler.shuffle(shuffled)
    a, b = scan(obs).report(include_clean=True), scan(shuffled).report(include_clean=True)
    assert {x.aggregate_id: (x.gaps, x.duplicates) for x in a.aggregates} == {
        x.aggregate_id: (x.gaps, x.duplicates) for x in b.aggregates
    }


def test_an_aggregate_on_several_partitions_is_a_finding_judged_per_partition() -> None:
    scanner = Scanner()
    # Partition 0: 1, 3, 2 (2 is late there); partition 1: 4, 5 read in between: in order there.
    places = [(1, 0), (4, 1), (3, 0), (5, 1), (2, 0)]
    for offset, (seq, p) in enumerate(places):
        scanner.observe(Observation("a", seq, f"id-{seq}", p, offset))
    got = scanner.aggregate("a")
    assert got is not None
    assert got.split and got.partitions == (0, 1)
    assert got.out_of_order == 1  # only 2, behind 3 on partition 0; 3 behind 4 is across partitions
    assert [(e.kind, e.sequence, e.highest_before) for e in got.examples] == [(OUT_OF_ORDER, 2, 3)]
    assert got.gaps == ()
    report = scanner.report()
    assert report.totals.split_aggregates == 1 and report.findings


def test_duplicates_conflicts_and_unsequenced_events() -> None:
    scanner = Scanner()
    feed = [
        ("a", 1, "x"),
        ("a", 2, "y"),
        ("a", 2, "y"),  # duplicate: skipped, like the worker
        ("a", 2, "z"),  # another id with number 2: a conflict, not out of order (2 is not below 2)
        ("a", 1, "w"),  # a conflict, and out of order
        ("a", None, "u"),  # unsequenced: applied unordered by the worker
        ("a", None, "u"),  # duplicate
        ("b", 2, "x"),  # the same id in another aggregate is another event
    ]
    for offset, (agg, seq, eid) in enumerate(feed):
        scanner.observe(Observation(agg, seq, eid, 0, offset))
    a = scanner.aggregate("a")
    assert a is not None
    assert (a.count, a.duplicates, a.conflicts, a.out_of_order, a.unsequenced) == (7, 2, 2, 1, 1)
    assert [(e.kind, e.offset) for e in a.examples] == [
        (DUPLICATE, 2),
        (CONFLICT, 3),
        (OUT_OF_ORDER, 4),
        (CONFLICT, 4),
        (DUPLICATE, 6),
    ]
    b = scanner.aggregate("b")
    assert b is not None and b.findings == 0
    totals = scanner.report().totals
    assert (totals.duplicates, totals.conflicts, totals.unsequenced, totals.aggregates_with_findings) == (2, 2, 1, 1)


def test_a_duplicate_neither_raises_the_highest_nor_fills_a_gap() -> None:
    scanner = Scanner()
    for offset, (seq, eid) in enumerate([(1, "a"), (3, "c"), (9, "a"), (2, "b")]):
        scanner.observe(Observation("g", seq, eid, 0, offset))
    got = scanner.aggregate("g")
    assert got is not None
    assert (got.duplicates, got.out_of_order, got.gaps, got.last_sequence) == (1, 1, (), 3)


def test_undecodable_records_are_counted_by_reason_and_listed_with_their_place() -> None:
    scanner = Scanner()
    scanner.undecodable(3, 17, "sequence out of range 1..100: 250")
    scanner.undecodable(1, 4, "sequence out of range 1..100: 7000")
    scanner.undecodable(0, 9, "structured event is not JSON: Expecting value at 0")
    report = scanner.report()
    assert report.undecodable_by_reason == {"sequence out of range N..N": 2, "structured event is not JSON": 1}
    assert [(u.partition, u.offset) for u in report.undecodable] == [(3, 17), (1, 4), (0, 9)]
    assert report.totals.undecodable == 3 and report.findings
    assert report.totals.aggregates == 0


def test_a_huge_hole_costs_nothing() -> None:
    started = time.perf_counter()
    assert gaps_of([1, 2**53, 5, 10**15]) == ((2, 4), (6, 10**15 - 1), (10**15 + 1, 2**53 - 1))
    assert time.perf_counter() - started < 0.1


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(0, 300), max_size=80))
def test_gaps_are_the_missing_numbers_between_the_lowest_and_the_highest(numbers: set[int]) -> None:
    expected = set(range(min(numbers), max(numbers) + 1)) - numbers if numbers else set()
    got = gaps_of(numbers)
    assert {n for a, b in got for n in range(a, b + 1)} == expected
    assert all(a <= b for a, b in got)
    assert all(b1 + 1 < a2 for (_, b1), (a2, _) in zip(got, got[1:], strict=False))  # separate, ascending


@pytest.mark.parametrize(
    ("text", "back"),
    [("15m", 900), ("2h", 7_200), ("1d", 86_400), ("30s", 30), ("1w", 604_800), ("1h30m", 5_400), ("1.5h", 5_400)],
)
def test_since_as_a_duration(text: str, back: float) -> None:
    assert parse_since(text, 1_000_000.0) == 1_000_000.0 - back


def test_since_as_a_time() -> None:
    assert parse_since("2026-01-02T03:04:05Z", 0) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert parse_since("2026-01-02T03:04:05+01:00", 0) == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC).timestamp()
    assert parse_since("1767225600", 0) == 1_767_225_600.0
    assert parse_since("2026-01-02", 0) == datetime(2026, 1, 2).timestamp()  # local time, as `dlq --since`


@pytest.mark.parametrize("text", ["", "15", "m", "15x", "-2h", "yesterday", "inf", "nan", "2026-13-01", "1h 30m"])
def test_a_since_that_is_no_time_is_refused(text: str) -> None:
    if text == "15":  # a bare number is epoch seconds, as in `dlq --since`
        assert parse_since(text, 0) == 15.0
        return
    with pytest.raises(ValueError, match="--since"):
        parse_since(text, 0)


def test_the_since_gate_skips_until_the_first_record_at_or_after_the_time_per_partition() -> None:
    gate = SinceGate(100.0)
    admitted = [gate.admit(p, ts) for p, ts in [(0, 50), (1, 120), (0, 100), (0, 60), (1, 10), (2, None), (2, 99)]]
    assert admitted == [False, True, True, True, True, False, False]
    assert gate.skipped == 3
    assert all(SinceGate(None).admit(0, ts) for ts in (0, None))


def test_reason_of_keeps_the_kind_and_drops_the_particulars() -> None:
    assert reason_of("record of 300000 bytes exceeds the limit of 256000") == "record of N bytes exceeds the limit of N"
    assert reason_of("header ce_id is not UTF-8: invalid start byte at byte 0") == "header ce_id is not UTF-8"
    assert reason_of("missing or empty CloudEvents attribute 'type'") == "missing or empty CloudEvents attribute 'type'"
