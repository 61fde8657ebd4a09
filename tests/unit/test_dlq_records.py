"""The DLQ record format and the pure half of replay: one contract per test.

Pure: DLQ records are built with ``dlq_headers`` and read back through a fake Kafka
record; no broker. Times are explicit ``now`` values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.dlq import records as r
from workers.dlq.records import DeadLetter, Failure, dlq_headers, header, original_headers
from workers.dlq.replay import Filters, Plan, make_plan, sort_key, target
from workers.records import InRecord
from workers.settings import Settings

SETTINGS = Settings(app_id="seqguard", input_topic="seqguard.events", max_replays=3)
OURS = {
    r.ORIGINAL_TOPIC, r.ORIGINAL_PARTITION, r.ORIGINAL_OFFSET, r.ORIGINAL_TIMESTAMP, r.AGGREGATE_ID, r.SEQUENCE,
    r.EVENT_TYPE, r.EVENT_ID, r.ERROR_CLASS, r.ERROR_MESSAGE, r.ATTEMPTS, r.FIRST_FAILURE, r.LAST_FAILURE,
    r.REPLAY_COUNT, r.WORKER_ID,
}  # fmt: skip
PRODUCER_HEADERS = [("content-type", b"application/cloudevents+json"), ("traceparent", b"00-abc-01")]


@dataclass
class FakeRecord:
    """What aiokafka's ConsumerRecord offers DeadLetter.from_record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = field(default_factory=list)


def source(headers: list[tuple[str, bytes]] | None = None, **over) -> InRecord:
    fields = {
        "topic": "seqguard.events",
        "partition": 3,
        "offset": 41,
        "timestamp": 1_700_000_000.0,
        "key": b"order-1",
        "value": b"{}",
    }
    fields.update(over)
    return InRecord(headers=list(PRODUCER_HEADERS if headers is None else headers), **fields)


def failure(**over) -> Failure:
    fields = {"error_class": "handler_exception", "message": "boom", "attempts": 3, "aggregate_id": "order-1",
              "sequence": 2, "event_type": "order.paid", "event_id": "evt-2"}  # fmt: skip
    fields.update(over)
    return Failure(**fields)


def headers_of(
    src: InRecord | None = None, fail: Failure | None = None, *, now: float = 1000.0, max_message: int = 1000
) -> dict[str, str]:
    built = dlq_headers(src or source(), fail or failure(), worker_id="host:1", max_message=max_message, now=now)
    return {k: v.decode() for k, v in built if k.startswith(r.PREFIX)}


def dead_letter(
    src: InRecord | None = None, fail: Failure | None = None, *, now: float = 1000.0, dlq_offset: int = 7
) -> DeadLetter:
    src = src or source()
    built = dlq_headers(src, fail or failure(), worker_id="host:1", max_message=1000, now=now)
    return DeadLetter.from_record(FakeRecord("seqguard.events.dlq", 0, dlq_offset, src.key, src.value, built))


def replayed(letter: DeadLetter, *, topic: str = "seqguard.events", partition: int = 5, offset: int = 900) -> InRecord:
    """The record a replay republishes, as the worker reads it back from the input topic."""
    ts = letter.original_timestamp
    return InRecord(
        topic, partition, offset, None if ts is None else ts / 1000, letter.key, letter.value, letter.replay_headers()
    )


def letter(aggregate: str = "a", sequence: int | None = 1, ts: int | None = 10, *, replays: int = 0, error: str = "handler_exception",
           event_type: str = "order.paid", last_failure: float = 100.0, offset: int = 0) -> DeadLetter:  # fmt: skip
    meta = {
        "aggregate-id": aggregate, "sequence": "" if sequence is None else str(sequence),
        "original-timestamp": "" if ts is None else str(ts), "replay-count": str(replays), "error-class": error,
        "event-type": event_type, "last-failure": f"{last_failure:.3f}",
    }  # fmt: skip
    headers = [(r.PREFIX + k, v.encode()) for k, v in meta.items()]
    return DeadLetter.from_record(FakeRecord("seqguard.events.dlq", 0, offset, aggregate.encode(), b"{}", headers))


# --------------------------------------------------------------------------- dlq_headers


def test_dlq_headers_add_every_seqguard_header() -> None:
    assert set(headers_of()) == OURS


def test_dlq_headers_keep_the_original_headers_first_and_in_order() -> None:
    built = dlq_headers(source(), failure(), worker_id="w", max_message=100, now=1.0)
    assert built[: len(PRODUCER_HEADERS)] == PRODUCER_HEADERS
    assert {k for k, _ in built[len(PRODUCER_HEADERS) :]} == OURS


def test_dlq_headers_record_where_the_record_came_from_and_why_it_failed() -> None:
    assert headers_of(now=1234.5) == {
        r.ORIGINAL_TOPIC: "seqguard.events",
        r.ORIGINAL_PARTITION: "3",
        r.ORIGINAL_OFFSET: "41",
        r.ORIGINAL_TIMESTAMP: "1700000000000",
        r.AGGREGATE_ID: "order-1",
        r.SEQUENCE: "2",
        r.EVENT_TYPE: "order.paid",
        r.EVENT_ID: "evt-2",
        r.ERROR_CLASS: "handler_exception",
        r.ERROR_MESSAGE: "boom",
        r.ATTEMPTS: "3",
        r.FIRST_FAILURE: "1234.500",
        r.LAST_FAILURE: "1234.500",
        r.REPLAY_COUNT: "0",
        r.WORKER_ID: "host:1",
    }


def test_dlq_headers_of_an_undecodable_record_leave_unknown_fields_empty() -> None:
    got = headers_of(source(timestamp=None), Failure("deserialization_failed", "not JSON"))
    assert [got[h] for h in (r.ORIGINAL_TIMESTAMP, r.AGGREGATE_ID, r.SEQUENCE, r.EVENT_TYPE, r.EVENT_ID)] == [
        "",
        "",
        "",
        "",
        "",
    ]
    assert got[r.ATTEMPTS] == "1"


def test_dlq_headers_truncate_the_error_message_to_max_message() -> None:
    assert headers_of(fail=failure(message="x" * 50 + "TAIL"), max_message=50)[r.ERROR_MESSAGE] == "x" * 50


def test_dlq_headers_encode_a_message_that_is_not_valid_unicode() -> None:
    built = dlq_headers(source(), failure(message="bad \ud800 text"), worker_id="w", max_message=100, now=1.0)
    assert header(built, r.ERROR_MESSAGE) == "bad ? text"


def test_dlq_headers_replace_stale_seqguard_headers_from_the_input() -> None:
    stale = [*PRODUCER_HEADERS, (r.ERROR_CLASS, b"timeout_exceeded"), (r.WORKER_ID, b"old")]
    built = dlq_headers(source(stale), failure(), worker_id="w", max_message=100, now=1.0)
    assert [v for k, v in built if k == r.ERROR_CLASS] == [b"handler_exception"]
    assert [v for k, v in built if k == r.WORKER_ID] == [b"w"]


def test_dlq_headers_tolerate_null_header_values() -> None:
    built = dlq_headers(
        source([("traceparent", None), (r.REPLAY_COUNT, None)]), failure(), worker_id="w", max_message=100, now=1.0
    )
    assert ("traceparent", None) in built and header(built, r.REPLAY_COUNT) == "0"


def test_replayed_record_keeps_its_first_failure_time() -> None:
    again = headers_of(replayed(dead_letter(now=1000.0)), now=5000.0)
    assert (again[r.FIRST_FAILURE], again[r.LAST_FAILURE]) == ("1000.000", "5000.000")


def test_replayed_record_keeps_the_replay_count_it_carries() -> None:
    assert headers_of(replayed(dead_letter()), now=2000.0)[r.REPLAY_COUNT] == "1"


def test_replayed_record_keeps_the_original_topic_partition_and_offset() -> None:
    again = headers_of(replayed(dead_letter(), partition=6, offset=9999), now=2000.0)
    assert (again[r.ORIGINAL_TOPIC], again[r.ORIGINAL_PARTITION], again[r.ORIGINAL_OFFSET]) == (
        "seqguard.events",
        "3",
        "41",
    )


def test_replayed_record_keeps_the_original_place_through_the_repartition_topic() -> None:
    first = dead_letter(source(topic=SETTINGS.repartition_topic, partition=2, offset=8))
    again = headers_of(replayed(first, topic="seqguard.events", partition=0, offset=77), now=2000.0)
    assert (again[r.ORIGINAL_TOPIC], again[r.ORIGINAL_PARTITION], again[r.ORIGINAL_OFFSET]) == (
        SETTINGS.repartition_topic,
        "2",
        "8",
    )


def test_second_replay_counts_two_and_still_keeps_the_first_failure() -> None:
    second = dead_letter(replayed(dead_letter(now=1000.0)), now=2000.0, dlq_offset=8)
    again = headers_of(replayed(second, partition=1, offset=5), now=3000.0)
    assert (again[r.REPLAY_COUNT], again[r.FIRST_FAILURE], again[r.ORIGINAL_OFFSET]) == ("2", "1000.000", "41")


def test_record_not_marked_as_a_replay_records_its_own_place() -> None:
    # Producer headers that look like ours, without replayed-from, do not move the origin.
    src = source([(r.ORIGINAL_TOPIC, b"elsewhere"), (r.ORIGINAL_OFFSET, b"1")])
    got = headers_of(src)
    assert (got[r.ORIGINAL_TOPIC], got[r.ORIGINAL_OFFSET]) == ("seqguard.events", "41")


def test_replayed_record_with_malformed_original_place_falls_back_to_its_own() -> None:
    src = source([(r.REPLAYED_FROM, b"dlq:0:1"), (r.ORIGINAL_PARTITION, b"two"), (r.ORIGINAL_OFFSET, b"-1")])
    got = headers_of(src)
    assert (got[r.ORIGINAL_PARTITION], got[r.ORIGINAL_OFFSET]) == ("3", "41")


def test_original_headers_drop_only_seqguard_headers() -> None:
    mixed = [("a", b"1"), (r.ERROR_CLASS, b"x"), ("seqguard", b"kept: no dash"), ("b", b"2")]
    assert original_headers(mixed) == [("a", b"1"), ("seqguard", b"kept: no dash"), ("b", b"2")]


def test_header_returns_the_last_value_of_a_repeated_header() -> None:
    assert header([("h", b"1"), ("h", b"2")], "h") == "2"


def test_header_of_an_absent_name_is_none() -> None:
    assert header([("h", b"1")], "other") is None


# --------------------------------------------------------------------------- DeadLetter


def test_from_record_parses_seqguard_headers_into_meta() -> None:
    dl = dead_letter()
    assert dl.meta["error-class"] == "handler_exception" and dl.meta["worker-id"] == "host:1"
    assert not any(k.startswith(r.PREFIX) for k in dl.meta)


def test_from_record_keeps_key_value_headers_and_place() -> None:
    record = FakeRecord("t.dlq", 2, 17, b"k", b"v", [("h", b"1")])
    dl = DeadLetter.from_record(record)
    assert (dl.dlq_topic, dl.dlq_partition, dl.dlq_offset, dl.key, dl.value, dl.headers) == (
        "t.dlq",
        2,
        17,
        b"k",
        b"v",
        [("h", b"1")],
    )
    assert dl.place == "t.dlq:2:17"


def test_from_record_without_headers_has_empty_meta_and_defaults() -> None:
    dl = DeadLetter.from_record(FakeRecord("t.dlq", 0, 0, None, None, None))
    assert (dl.headers, dl.meta, dl.error_class, dl.aggregate_id, dl.event_type) == ([], {}, "", "", "")
    assert (dl.sequence, dl.original_timestamp, dl.replay_count, dl.last_failure, dl.original_topic) == (
        None,
        None,
        0,
        0.0,
        "",
    )


def test_from_record_typed_properties() -> None:
    dl = dead_letter(now=1234.5)
    assert (dl.error_class, dl.aggregate_id, dl.event_type, dl.original_topic) == (
        "handler_exception",
        "order-1",
        "order.paid",
        "seqguard.events",
    )
    assert (dl.sequence, dl.original_timestamp, dl.replay_count, dl.last_failure) == (2, 1_700_000_000_000, 0, 1234.5)


def test_from_record_malformed_numbers_read_as_unknown() -> None:
    headers = [(r.SEQUENCE, b"two"), (r.ORIGINAL_TIMESTAMP, b"x"), (r.REPLAY_COUNT, b"-1"), (r.LAST_FAILURE, b"soon")]
    dl = DeadLetter.from_record(FakeRecord("t.dlq", 0, 0, None, None, headers))
    assert (dl.sequence, dl.original_timestamp, dl.replay_count, dl.last_failure) == (None, None, 0, 0.0)


def test_from_record_negative_original_timestamp_is_kept() -> None:
    dl = DeadLetter.from_record(FakeRecord("t.dlq", 0, 0, None, None, [(r.ORIGINAL_TIMESTAMP, b"-5")]))
    assert dl.original_timestamp == -5


def test_from_record_non_utf8_header_value_is_replaced_not_fatal() -> None:
    dl = DeadLetter.from_record(FakeRecord("t.dlq", 0, 0, None, None, [(r.ERROR_MESSAGE, b"bad \xff")]))
    assert dl.meta["error-message"] == "bad \ufffd"


def test_from_record_null_seqguard_header_value_reads_as_empty_not_fatal() -> None:
    dl = DeadLetter.from_record(FakeRecord("t.dlq", 0, 0, None, None, [(r.ERROR_CLASS, None), (r.SEQUENCE, None)]))
    assert (dl.error_class, dl.sequence, dl.summary()["error-class"]) == ("", None, "")


# --------------------------------------------------------------------------- header keys that were not UTF-8


def test_dlq_headers_escape_a_key_that_was_not_utf8_and_keep_its_value_untouched() -> None:
    # aiokafka (patched, workers/kafka/patches.py) reads the key bytes b"x-\xff\xfe" with surrogateescape.
    src = source([("x-\udcff\udcfe", b"\xff\x00raw"), *PRODUCER_HEADERS])
    built = dlq_headers(src, failure(), worker_id="w", max_message=100, now=1.0)
    assert built[: len(PRODUCER_HEADERS) + 1] == [("x-\\xff\\xfe", b"\xff\x00raw"), *PRODUCER_HEADERS]
    for key, _ in built:
        key.encode("utf-8")  # a producer writes every key as UTF-8: none may fail


def test_dlq_headers_keep_a_non_ascii_utf8_key_as_it_is() -> None:
    assert original_headers([("trace-é", b"1")]) == [("trace-é", b"1")]


def test_replay_of_an_escaped_key_republishes_the_escaped_key() -> None:
    letter = dead_letter(source([("k\udcff", b"v")]))
    assert ("k\\xff", b"v") in letter.replay_headers()


def test_summary_shows_place_key_and_meta() -> None:
    summary = dead_letter().summary()
    assert (summary["place"], summary["key"], summary["error-class"]) == (
        "seqguard.events.dlq:0:7",
        "order-1",
        "handler_exception",
    )


def test_replay_headers_strip_old_seqguard_headers_and_keep_the_producer_ones() -> None:
    out = dead_letter().replay_headers()
    assert out[: len(PRODUCER_HEADERS)] == PRODUCER_HEADERS
    assert {k for k, _ in out[len(PRODUCER_HEADERS):]} == {
        r.REPLAY_COUNT, r.FIRST_FAILURE, r.REPLAYED_FROM, r.ORIGINAL_TOPIC, r.ORIGINAL_PARTITION, r.ORIGINAL_OFFSET,
    }  # fmt: skip


def test_replay_headers_increment_the_replay_count() -> None:
    dl = DeadLetter.from_record(FakeRecord("t.dlq", 0, 0, None, None, [(r.REPLAY_COUNT, b"2")]))
    assert header(dl.replay_headers(), r.REPLAY_COUNT) == "3"


def test_replay_headers_carry_first_failure_origin_and_where_the_replay_came_from() -> None:
    out = dead_letter(now=1000.0).replay_headers()
    carried = {
        k: header(out, k)
        for k in (r.FIRST_FAILURE, r.REPLAYED_FROM, r.ORIGINAL_TOPIC, r.ORIGINAL_PARTITION, r.ORIGINAL_OFFSET)
    }
    assert carried == {
        r.FIRST_FAILURE: "1000.000",
        r.REPLAYED_FROM: "seqguard.events.dlq:0:7",
        r.ORIGINAL_TOPIC: "seqguard.events",
        r.ORIGINAL_PARTITION: "3",
        r.ORIGINAL_OFFSET: "41",
    }


# --------------------------------------------------------------------------- Filters


def test_empty_filters_match_everything() -> None:
    assert Filters().match(letter()) and Filters().match(DeadLetter.from_record(FakeRecord("t", 0, 0, None, None)))


def test_filter_by_aggregate() -> None:
    f = Filters(aggregate="a")
    assert f.match(letter("a")) and not f.match(letter("b"))


def test_filter_by_event_type() -> None:
    f = Filters(event_type="order.paid")
    assert f.match(letter(event_type="order.paid")) and not f.match(letter(event_type="order.shipped"))


def test_filter_by_error_classes() -> None:
    f = Filters(error_classes=frozenset({"timeout_exceeded", "schema_invalid"}))
    assert f.match(letter(error="schema_invalid")) and not f.match(letter(error="handler_exception"))


def test_filter_since_is_inclusive() -> None:
    f = Filters(since=100.0)
    assert f.match(letter(last_failure=100.0)) and not f.match(letter(last_failure=99.999))


def test_filter_until_is_inclusive() -> None:
    f = Filters(until=100.0)
    assert f.match(letter(last_failure=100.0)) and not f.match(letter(last_failure=100.001))


def test_filters_combine_with_and() -> None:
    f = Filters(aggregate="a", error_classes=frozenset({"schema_invalid"}))
    assert not f.match(letter("a", error="handler_exception")) and not f.match(letter("b", error="schema_invalid"))


# --------------------------------------------------------------------------- make_plan


def test_already_replayed_records_are_skipped() -> None:
    done, todo = letter(offset=1), letter(offset=2)
    plan = make_plan([done, todo], {done.place}, Filters(), max_replays=3)
    assert (plan.replay, plan.already_replayed) == ([todo], 1)


def test_records_not_matching_the_filters_are_counted_not_replayed() -> None:
    plan = make_plan([letter("a", offset=1), letter("b", offset=2)], set(), Filters(aggregate="a"), max_replays=3)
    assert ([x.aggregate_id for x in plan.replay], plan.not_matching) == (["a"], 1)


def test_records_at_the_replay_limit_are_left_for_an_operator() -> None:
    at_limit, below = letter(replays=3, offset=1), letter(replays=2, offset=2)
    plan = make_plan([at_limit, below], set(), Filters(), max_replays=3)
    assert (plan.replay, plan.over_limit) == ([below], [at_limit])


def test_max_replays_zero_leaves_everything_for_an_operator() -> None:
    plan = make_plan([letter(offset=1), letter(offset=2)], set(), Filters(), max_replays=0)
    assert (len(plan.replay), len(plan.over_limit)) == (0, 2)


def test_replay_order_is_aggregate_then_sequence_then_original_timestamp() -> None:
    letters = [
        letter("b", 1, 5, offset=0),
        letter("a", 2, 1, offset=1),
        letter("a", 1, 9, offset=2),
        letter("a", 2, 0, offset=3),
        letter("a", None, 0, offset=4),
    ]
    plan = make_plan(letters, set(), Filters(), max_replays=3)
    assert [(x.aggregate_id, x.sequence, x.original_timestamp) for x in plan.replay] == [
        ("a", 1, 9), ("a", 2, 0), ("a", 2, 1), ("a", None, 0), ("b", 1, 5),
    ]  # fmt: skip


def test_records_without_timestamp_come_after_those_with_one() -> None:
    plan = make_plan([letter("a", 1, None, offset=0), letter("a", 1, 50, offset=1)], set(), Filters(), max_replays=3)
    assert [x.original_timestamp for x in plan.replay] == [50, None]


def test_identical_records_are_ordered_by_their_dlq_place() -> None:
    plan = make_plan([letter(offset=9), letter(offset=3)], set(), Filters(), max_replays=3)
    assert [x.dlq_offset for x in plan.replay] == [3, 9]


def test_plan_summary_counts_each_outcome() -> None:
    letters = [letter("a", error="schema_invalid", offset=0), letter("b", offset=1), letter("b", 2, offset=2),
               letter("c", replays=5, offset=3), letter("d", offset=4), letter("e", event_type="x", offset=5)]  # fmt: skip
    plan = make_plan(letters, {letters[4].place}, Filters(event_type="order.paid"), max_replays=3)
    assert plan.summary() == {
        "to_replay": 3,
        "aggregates": 2,
        "by_error_class": {"schema_invalid": 1, "handler_exception": 2},
        "already_replayed": 1,
        "over_replay_limit": 1,
        "not_matching_filters": 1,
    }


def test_empty_plan_summary() -> None:
    assert Plan().summary()["to_replay"] == 0


LETTERS = st.lists(
    st.builds(
        lambda agg, seq, ts, replays, error: (agg, seq, ts, replays, error),
        st.sampled_from(["a", "b", "c", "ab"]),
        st.one_of(st.none(), st.integers(1, 6)),
        st.one_of(st.none(), st.integers(-3, 6)),
        st.integers(0, 4),
        st.sampled_from(["handler_exception", "schema_invalid", "timeout_exceeded"]),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    specs=LETTERS,
    replayed_mask=st.lists(st.booleans(), min_size=30, max_size=30),
    max_replays=st.integers(0, 4),
    classes=st.sets(st.sampled_from(["handler_exception", "schema_invalid", "timeout_exceeded"])),
)
def test_plan_is_sorted_and_a_partition_of_the_input(specs, replayed_mask, max_replays, classes) -> None:
    letters = [letter(a, s, t, replays=n, error=e, offset=i) for i, (a, s, t, n, e) in enumerate(specs)]
    replayed_places = {x.place for x, done in zip(letters, replayed_mask, strict=False) if done}
    filters = Filters(error_classes=frozenset(classes))
    plan = make_plan(letters, replayed_places, filters, max_replays)

    keys = [sort_key(x) for x in plan.replay]
    assert keys == sorted(keys)
    assert [(x.aggregate_id, x.sequence or 2**63) for x in plan.replay] == sorted(
        (x.aggregate_id, x.sequence or 2**63) for x in plan.replay
    )
    chosen = [x.place for x in plan.replay + plan.over_limit]
    assert len(chosen) == len(set(chosen))
    assert len(chosen) + plan.already_replayed + plan.not_matching == len(letters)
    for x in letters:
        expected = ("done" if x.place in replayed_places else "skip" if not filters.match(x)
                    else "over" if x.replay_count >= max_replays else "replay")  # fmt: skip
        assert (x in plan.replay, x in plan.over_limit) == (expected == "replay", expected == "over")
    assert plan.already_replayed == sum(x.place in replayed_places for x in letters)


# --------------------------------------------------------------------------- target


def test_target_is_the_original_topic_and_partition() -> None:
    assert target(dead_letter(), SETTINGS) == ("seqguard.events", 3)


def test_target_maps_a_repartition_topic_record_back_to_the_input_topic_unpinned() -> None:
    assert target(dead_letter(source(topic=SETTINGS.repartition_topic, partition=5)), SETTINGS) == (
        "seqguard.events",
        None,
    )


def test_target_of_a_record_without_origin_is_the_input_topic_unpinned() -> None:
    assert target(DeadLetter.from_record(FakeRecord("seqguard.events.dlq", 0, 0, None, None)), SETTINGS) == (
        "seqguard.events",
        None,
    )


def test_target_never_is_another_original_topic() -> None:
    # Only the input topic is replayed into (tests/unit/test_replay_target.py): routed by key.
    assert target(dead_letter(source(topic="legacy.events", partition=1)), SETTINGS) == ("seqguard.events", None)


def test_repartition_topic_is_derived_from_app_id_and_input_topic() -> None:
    assert Settings(app_id="shop", input_topic="in").repartition_topic == "shop-in-repartition"


@pytest.mark.parametrize("partition", ["", "x", "-1"])
def test_target_with_an_unusable_original_partition_is_unpinned(partition: str) -> None:
    headers = [(r.ORIGINAL_TOPIC, b"seqguard.events"), (r.ORIGINAL_PARTITION, partition.encode())]
    assert target(DeadLetter.from_record(FakeRecord("d", 0, 0, None, None, headers)), SETTINGS) == (
        "seqguard.events",
        None,
    )
