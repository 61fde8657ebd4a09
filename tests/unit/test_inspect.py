"""What the worker's /aggregates and /gaps pages and `seqguard gaps/aggregate/verify` show
(tables.inspect): views of aggregates the real core (tests/unit/_seqdriver.py) left with gaps
or parked, missing ranges, commands for hostile IDs, cursor pages, owners; and the binding's
held_views / aggregate_view / partition_of (workers/inspect.py) on an in-memory table."""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from tables.inspect import (
    MAX_PAGE,
    AggregateView,
    decode_cursor,
    missing_ranges,
    oldest_first,
    owner_of,
    page,
    parse_limit,
    resolve_command,
    view,
)
from tables.policy import Policy, PolicyBook
from tables.state import Aggregate, encode
from tests.unit._seqdriver import Driver, ev
from workers.cli_inspect import Survey, _well_formed, duration, printable
from workers.inspect import aggregate_view, held_views, partition_of
from workers.processor.store import StateStore

T0 = 1_700_000_000.0
STRICT = Policy(ordering="strict", gap_timeout=5.0, gap_policy="park")
BOOK = PolicyBook(by_type={"ledger.entry": STRICT})


def delivered(*seqs: int, agg: str = "a", event_type: str = "order.event", fail: tuple[int, ...] = ()) -> Driver:
    d = Driver(book=BOOK)
    for s in fail:
        d.fail_times[f"id-{s}"] = 99
    for i, s in enumerate(seqs):
        d.deliver(agg, ev(s, event_type), T0 + i)
    return d


# --------------------------------------------------------------------------- views of the core's states


def test_an_open_gap_shows_next_expected_buffered_missing_and_its_age() -> None:
    d = delivered(1, 2, 4, 5, 8)
    v = view("a", 3, d.agg("a"), now=T0 + 100)
    assert (v.status, v.next_expected, v.last_applied, v.buffered) == ("gap", 3, 2, (4, 5, 8))
    assert v.missing == ((3, 3), (6, 7))
    assert v.parked_at is None and v.gap_open_since == T0 + 2  # 4 began to wait when it arrived
    assert v.gap_age_seconds == v.waiting_seconds == 98
    assert v.waits_for() == "missing 3, 6-7"
    assert resolve_command(v) == "seqguard aggregates resolve a --skip-to 4 --reason 'give up on 3'"


def test_an_aggregate_whose_first_event_is_missing_waits_for_1() -> None:
    v = view("b", 0, delivered(2, agg="b").agg("b"), now=T0)
    assert (v.next_expected, v.last_applied, v.buffered, v.missing) == (1, None, (2,), ((1, 1),))


def test_an_aggregate_in_order_needs_no_attention() -> None:
    v = view("c", 0, delivered(1, 2, 3, agg="c").agg("c"), now=T0)
    assert (v.status, v.needs_attention, v.missing) == ("ok", False, ())
    assert v.waiting_seconds is None and resolve_command(v) is None and v.as_json()["command"] is None


def test_a_handler_failure_parks_and_its_event_is_in_the_dlq_not_missing() -> None:
    d = delivered(1, 2, 3, 4, 6, fail=(2,))
    assert d.dlq and d.dlq[0][1].seq == 2
    v = view("a", 1, d.agg("a"), now=T0 + 50)
    assert (v.status, v.parked_at, v.parked_reason, v.parked_since) == ("parked", 2, "Boom", T0 + 1)
    assert v.buffered == (3, 4, 6) and v.missing == ((5, 5),)  # 2 was received: it waits in the DLQ
    assert v.waiting_seconds == 49
    body = v.as_json()
    assert body["command"] == "seqguard dlq replay --aggregate a"
    assert body["resolve"] == "seqguard aggregates resolve a --skip-to 3 --reason 'give up on event 2 (in the DLQ)'"
    assert "in the DLQ (Boom)" in body["waits_for"] and "then missing 5" in body["waits_for"]


def test_a_gap_timeout_on_a_strict_type_parks_on_the_missing_number() -> None:
    d = delivered(1, 3, agg="l", event_type="ledger.entry")
    d.tick(T0 + 60)
    v = view("l", 0, d.agg("l"), now=T0 + 70)
    assert (v.status, v.parked_at, v.parked_reason, v.missing, v.buffered) == ("parked", 2, "gap", ((2, 2),), (3,))
    assert v.since == T0 + 60 and v.waiting_seconds == 10
    assert v.as_json()["command"] == "seqguard aggregates resolve l --skip-to 3 --reason 'give up on 2'"


def test_the_resolve_command_it_prints_lets_the_aggregate_go_on() -> None:
    d = delivered(1, 2, 4, 5)
    v = view("a", 0, d.agg("a"), now=T0)
    skip_to = int(shlex.split(resolve_command(v) or "")[5])
    d.resolve("a", skip_to, T0 + 1)
    assert d.seqs("a") == [1, 2, 4, 5] and not view("a", 0, d.agg("a"), T0 + 1).needs_attention


# --------------------------------------------------------------------------- properties


@given(
    st.integers(1, 40),
    st.sets(st.integers(1, 60), max_size=30),
)
def test_missing_ranges_are_exactly_the_absent_numbers_in_order(next_seq: int, present: set[int]) -> None:
    highest = max(present, default=None)
    ranges = missing_ranges(next_seq, present, highest)
    listed = [n for a, b in ranges for n in range(a, b + 1)]
    expected = [] if highest is None else [n for n in range(next_seq, highest + 1) if n not in present]
    assert listed == expected
    assert all(a <= b for a, b in ranges) and all(b + 1 < c for (_, b), (c, _) in zip(ranges, ranges[1:], strict=False))


def test_a_billion_wide_gap_costs_one_range() -> None:
    assert missing_ranges(1, {10**9, 10**9 + 2}, 10**9 + 2) == ((1, 10**9 - 1), (10**9 + 1, 10**9 + 1))


hostile_ids = st.text(min_size=1, max_size=30)


@given(hostile_ids, st.integers(2, 10**6))
def test_commands_quote_any_id_for_the_shell_and_json_carries_it_exactly(aggregate_id: str, at: int) -> None:
    v = _view(aggregate_id, since=1.0, missing=((at, at),), buffered=(at + 1,))
    args = shlex.split(resolve_command(v) or "")
    assert args[:4] == ["seqguard", "aggregates", "resolve", aggregate_id] and args[5] == str(at + 1)
    assert json.loads(json.dumps(v.as_json()))["aggregate_id"] == aggregate_id
    parked = _view(aggregate_id, since=1.0, parked=(at, "handler_exception"))
    assert shlex.split(parked.as_json()["command"]) == ["seqguard", "dlq", "replay", "--aggregate", aggregate_id]


def _view(
    aggregate_id: str,
    since: float | None,
    *,
    missing: tuple[tuple[int, int], ...] = (),
    buffered: tuple[int, ...] = (),
    parked: tuple[int, str] | None = None,
) -> AggregateView:
    return AggregateView(
        aggregate_id=aggregate_id,
        partition=0,
        next_expected=1,
        last_applied=None,
        buffered=buffered,
        missing=missing,
        parked_at=None if parked is None else parked[0],
        parked_reason=None if parked is None else parked[1],
        parked_since=since if parked is not None else None,
        gap_open_since=since if parked is None and buffered else None,
        gap_age_seconds=None,
        last_active=0.0,
    )


@st.composite
def listings(draw: st.DrawFn) -> list[AggregateView]:
    ids = draw(st.lists(hostile_ids, unique=True, max_size=25))
    out = []
    for aggregate_id in ids:
        since = draw(st.one_of(st.none(), st.sampled_from([1.0, 2.5, 2.5, 1e9]), st.floats(0, 1e10)))
        kind = draw(st.sampled_from(["gap", "parked", "ok"]))
        if kind == "parked" and since is not None:
            out.append(_view(aggregate_id, since, parked=(3, "gap")))
        elif kind == "gap":
            out.append(_view(aggregate_id, since, missing=((1, 1),), buffered=(2,)))
        else:
            out.append(_view(aggregate_id, since))
    return out


@given(listings(), st.integers(1, 7))
def test_pages_followed_by_their_cursors_list_each_held_aggregate_once_oldest_first(
    views: list[AggregateView], limit: int
) -> None:
    seen: list[str] = []
    after = None
    for _ in range(len(views) + 2):
        chosen, after = page(views, after, limit)
        assert len(chosen) <= limit
        seen.extend(v.aggregate_id for v in chosen)
        if after is None:
            break
    assert seen == [v.aggregate_id for v in oldest_first(views)]
    times = [v.since if v.since is not None else math.inf for v in oldest_first(views)]
    assert times == sorted(times) and all(v.needs_attention for v in oldest_first(views))


def test_a_cursor_survives_aggregates_resolved_between_pages() -> None:
    views = [_view(f"g{i}", float(i), missing=((1, 1),), buffered=(2,)) for i in range(6)]
    first, after = page(views, None, 2)
    rest = [v for v in views if v.aggregate_id != "g0"]  # g0 resolved meanwhile: nothing shifts
    second, _ = page(rest, after, 2)
    assert [v.aggregate_id for v in first + second] == ["g0", "g1", "g2", "g3"]


@given(st.text(max_size=60))
def test_any_text_is_a_cursor_or_a_value_error(text: str) -> None:
    try:
        since, aggregate_id = decode_cursor(text)
    except ValueError:
        return
    assert isinstance(since, float) and isinstance(aggregate_id, str)


def test_limits() -> None:
    assert parse_limit(None) == parse_limit("") == 100 and parse_limit(str(MAX_PAGE)) == MAX_PAGE
    for bad in ("0", "-1", str(MAX_PAGE + 1), "ten", "1.5", "١٢"):
        try:
            parse_limit(bad)
        except ValueError:
            continue
        raise AssertionError(bad)


def test_an_owner_is_known_only_if_exactly_one_member_claims_the_partition() -> None:
    members: dict[str, Any] = {"http://a:1": {0, 1}, "http://b:1": {2}, "http://c:1": set()}
    assert owner_of(2, members) == "http://b:1" and owner_of(3, members) is None
    assert owner_of(1, {**members, "http://c:1": {1}}) is None  # two claims: mid-rebalance


# --------------------------------------------------------------------------- the binding (workers/inspect.py)


class Data(dict):  # type: ignore[type-arg]
    """Faust's memory store: a dict with the key -> partition map seqguard reads."""

    def __init__(self) -> None:
        super().__init__()
        self._key_partition: dict[bytes, int] = {}
        self.data = self  # Faust's store keeps its dict in .data (a FastUserDict)


class Table:
    def __init__(self, aggs: dict[tuple[str, int], Aggregate]) -> None:
        self.data = Data()
        for (agg_id, partition), agg in aggs.items():
            self.data[agg_id.encode()] = encode(agg)
            self.data._key_partition[agg_id.encode()] = partition


def test_held_views_lists_only_active_partitions_and_leaves_the_sweeps_index_alone() -> None:
    d = delivered(1, 3, agg="gap-a")
    d.deliver("parked-b", ev(1), T0)
    d.fail_times["id-2"] = 9
    d.deliver("parked-b", ev(2), T0 - 50)
    d.deliver("fine-c", ev(1), T0)
    table = Table({("gap-a", 0): d.agg("gap-a"), ("parked-b", 1): d.agg("parked-b"), ("fine-c", 0): d.agg("fine-c")})
    d.deliver("standby-d", ev(2), T0)
    table.data[b"standby-d"] = encode(d.agg("standby-d"))
    table.data._key_partition[b"standby-d"] = 5  # a standby copy: not this worker's to show
    store = StateStore(table, sink=None)  # type: ignore[arg-type] # nothing is written
    views = held_views(store, {0, 1}, T0 + 10)
    assert [(v.aggregate_id, v.status) for v in views] == [("parked-b", "parked"), ("gap-a", "gap")]
    assert store.held == {} and store._indexed_for is None  # a page never rebuilds the sweep's index
    store.reindex({0, 1})
    assert [v.aggregate_id for v in held_views(store, [0, 1], T0 + 10)] == ["parked-b", "gap-a"]
    assert aggregate_view(store, "gap-a", 0, T0) is not None and aggregate_view(store, "gap-a", 1, T0) is None
    assert aggregate_view(store, "standby-d", 0, T0) is None and aggregate_view(store, "nobody", 0, T0) is None


@given(st.binary(min_size=1, max_size=40).map(lambda b: b.decode("utf-8", "ignore")).filter(bool), st.integers(1, 64))
def test_partition_of_is_the_producers_default_partitioner(aggregate_id: str, partitions: int) -> None:
    assert partition_of(aggregate_id, partitions) == DefaultPartitioner()(
        aggregate_id.encode(), list(range(partitions)), []
    )


# --------------------------------------------------------------------------- the CLI's survey (workers/cli_inspect.py)


def test_a_survey_is_complete_only_when_every_member_answered_for_every_partition() -> None:
    found = Survey(answered={"http://a:1": [0, 1], "http://b:1": [2]}, partition_count=4)
    assert not found.complete and found.missing_partitions == [3]
    assert found.problems() == ["partitions 3 were reported by no worker (a rebalance?)"]
    found.answered["http://b:1"] = [2, 3]
    assert found.complete
    found.unanswered["http://c:1"] = "Connection refused"
    assert not found.complete and found.problems() == ["http://c:1 did not answer: Connection refused"]
    assert not Survey().complete  # nobody answered: never "all clear"


def test_a_survey_lists_the_longest_waiting_first_and_untimed_last() -> None:
    found = Survey()
    for aggregate_id, since in (("b", 5.0), ("c", None), ("a", 5.0), ("d", 1.0)):
        found.aggregates[aggregate_id] = {"aggregate_id": aggregate_id, "since": since}
    assert [x["aggregate_id"] for x in found.oldest_first()] == ["d", "a", "b", "c"]


def test_terminal_cells_escape_what_a_terminal_would_obey() -> None:
    assert printable("evil\x1b[2J\nid\u202e") == "evil\\x1b[2J\\nid\\u202e"
    assert printable(None) == "-" and printable("café 7") == "café 7"
    assert [duration(s) for s in (None, 4.4, 65, 3_700, 90_000)] == ["-", "4s", "1m05s", "1h01m", "1d01h"]


def test_answers_that_are_not_a_workers_gaps_page_are_refused() -> None:
    good: dict[str, Any] = {"partitions": [0], "workers": ["http://a:1"], "aggregates": [{"aggregate_id": "x"}]}
    assert _well_formed(good)
    for field, bad in (("partitions", ["0"]), ("partitions", [True]), ("workers", "http://a:1"), ("aggregates", [{}])):
        assert not _well_formed({**good, field: bad}), field
