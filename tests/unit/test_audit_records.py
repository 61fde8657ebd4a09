"""Reading the audit topic back, and the ``replayed`` record a DLQ replay writes: the pure parts.

No broker: records are decoded from bytes, windows are judged from entries built here.
"""

from __future__ import annotations

import json

import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.audit import MALFORMED, AuditEntry, Query, by_time, decode, details, enough, line, parse_since, printable
from workers.dlq.records import DeadLetter
from workers.dlq.replay import BY_OPERATOR, audit_record, operator_of
from workers.settings import Settings

T0 = 1_700_000_000.0


def body(**fields: object) -> bytes:
    return json.dumps({"kind": "gap_parked", "aggregate": "order-1", "at": T0, "worker": "w:1", **fields}).encode()


def entry(offset: int, t: float, *, partition: int = 0, kind: str = "gap_parked", aggregate: str = "a") -> AuditEntry:
    return AuditEntry(partition, offset, t, kind, aggregate, {"kind": kind, "aggregate": aggregate})


# --------------------------------------------------------------------------- decoding


def test_a_record_decodes_to_its_kind_aggregate_and_the_time_kafka_stored() -> None:
    e = decode(0, 5, int(T0 * 1000) + 250, b"order-1", body(seq=2, type="order.paid"))
    assert (e.kind, e.aggregate, e.time, e.problem) == ("gap_parked", "order-1", T0 + 0.25, None)
    assert e.body["seq"] == 2


def test_without_a_record_timestamp_the_body_at_is_the_time() -> None:
    assert decode(0, 5, None, b"k", body()).time == T0
    assert decode(0, 5, -1, b"k", body()).time == T0


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (None, "null value"),
        (b"\xff\xfe not utf-8", "not JSON"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"aggregate": "x"}', "no kind"),
        (b'{"kind": 7}', "no kind"),
        (b'{"kind": ""}', "no kind"),
        (b"NaN", "not a JSON object"),
    ],
)
def test_a_malformed_record_is_shown_as_such_with_its_key_as_aggregate(value: bytes | None, why: str) -> None:
    e = decode(2, 9, int(T0 * 1000), b"order-\xff", value)
    assert e.kind == MALFORMED and e.problem is not None and e.problem.startswith(why)
    assert e.aggregate == "order-\ufffd" and e.body == {} and e.time == T0
    assert e.as_json()["malformed"] == e.problem and e.as_json()["record"] is None
    assert "2:9" in line(e)


def test_fields_of_the_wrong_type_do_not_break_decoding() -> None:
    e = decode(0, 1, None, b"from-key", json.dumps({"kind": "resolved", "aggregate": ["x"], "at": "later"}).encode())
    assert (e.kind, e.aggregate, e.time) == ("resolved", "from-key", 0.0)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.none(), st.binary(max_size=20) | st.none(), st.integers(-5, 2**45) | st.none())
def test_decoding_never_raises(value: bytes | None, key: bytes | None, ts: int | None) -> None:
    e = decode(0, 0, ts, key, value)
    assert isinstance(e.kind, str) and isinstance(e.time, float)
    json.dumps(e.as_json())
    assert "\n" not in line(e)


# --------------------------------------------------------------------------- choosing and ordering


def test_partitions_merge_by_time_each_in_its_append_order() -> None:
    p0 = [entry(1, 10.0), entry(0, 5.0), entry(2, 9.0)]  # a producer clock went back: offsets still rule
    p1 = [entry(0, 7.0, partition=1), entry(1, 11.0, partition=1)]
    merged = by_time([p0, p1])
    assert [(e.partition, e.offset) for e in merged] == [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1)]


def test_a_query_filters_kind_aggregate_and_time_then_keeps_the_last_n() -> None:
    es = [entry(i, float(i), kind="resolved" if i % 2 else "gap_parked", aggregate=f"a{i % 3}") for i in range(12)]
    assert [e.offset for e in Query(kinds=frozenset({"resolved"})).select(es)] == [1, 3, 5, 7, 9, 11]
    assert [e.offset for e in Query(aggregate="a0").select(es)] == [0, 3, 6, 9]
    assert [e.offset for e in Query(since=9.0).select(es)] == [9, 10, 11]
    assert [e.offset for e in Query(kinds=frozenset({"resolved"}), limit=2).select(es)] == [9, 11]
    assert len(Query().select(es)) == 12


TP0, TP1 = TopicPartition("audit", 0), TopicPartition("audit", 1)


def test_a_window_with_the_last_n_matches_is_enough_unless_another_partition_may_hold_newer() -> None:
    read = {TP0: [entry(i, 100.0 + i) for i in range(10)]}
    assert enough(Query(limit=5), read, complete=set())
    assert not enough(Query(limit=11), read, complete=set())  # older records may match
    assert enough(Query(limit=11), read, complete={TP0})  # the whole partition was read
    assert not enough(Query(limit=5, kinds=frozenset({"resolved"})), read, complete=set())
    # Partition 1's window starts at 108: older records of it may be among the last 5 (from 105).
    both = {**read, TP1: [entry(i, 108.0 + i, partition=1) for i in range(3)]}
    assert not enough(Query(limit=5), both, complete=set())
    assert enough(Query(limit=5), both, complete={TP1})


def test_a_window_reaching_back_past_since_is_enough_whatever_the_limit() -> None:
    read = {TP0: [entry(i, 100.0 + i) for i in range(10)]}
    assert enough(Query(since=104.0), read, complete=set())
    assert enough(Query(since=104.0, limit=50), read, complete=set())
    assert not enough(Query(since=100.0), read, complete=set())
    assert not enough(Query(), read, complete=set())  # everything: only the whole topic will do
    assert enough(Query(), {TP0: []}, complete=set())


# --------------------------------------------------------------------------- for people


@pytest.mark.parametrize(("text", "ago"), [("15m", 900), ("2h", 7200), ("1d", 86400), ("30s", 30), ("1.5h", 5400)])
def test_since_takes_durations_ago(text: str, ago: float) -> None:
    assert parse_since(text, now=T0) == T0 - ago


def test_since_takes_iso_times_and_epoch_seconds() -> None:
    assert parse_since("2023-11-14T22:13:20+00:00") == T0
    assert parse_since(str(T0)) == T0
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday")


def test_a_line_escapes_control_characters_of_an_aggregate_id() -> None:
    hostile = "order-1\n2099-01-01T00:00:00  resolved  order-1\x1b[2J\u202e"
    e = decode(0, 0, int(T0 * 1000), None, body(aggregate=hostile, reason="a\tb"))
    text = line(e)
    assert "\n" not in text and "\x1b" not in text and "\u202e" not in text and "\t" not in text
    assert "\\n2099" in text and "\\x1b[2J" in text and "\\u202e" in text
    assert printable("plain ünïcode") == "plain ünïcode"


def test_details_list_the_fields_with_the_worker_last() -> None:
    e = decode(0, 0, None, None, body(seq=2, type="order.paid", reason="lost upstream", skipped=[2, 2]))
    assert details(e) == 'seq=2 type=order.paid reason="lost upstream" skipped=[2,2] worker=w:1'


# --------------------------------------------------------------------------- replays


def dead(meta: dict[str, str], key: bytes | None = b"order-1") -> DeadLetter:
    return DeadLetter("t.dlq", 1, 17, key, b"{}", [], meta)


def test_a_replay_audit_record_names_the_event_its_dlq_place_and_who() -> None:
    letter = dead({"aggregate-id": "order-1", "sequence": "2", "event-type": "order.paid", "event-id": "e-2",
                   "error-class": "timeout_exceeded", "replay-count": "1"})  # fmt: skip
    key, value = audit_record(letter, BY_OPERATOR, "alice", T0)
    record = json.loads(value)
    assert key == b"order-1"
    assert record == {
        "kind": "replayed", "aggregate": "order-1", "at": T0, "seq": 2, "type": "order.paid",
        "error_class": "timeout_exceeded", "event_id": "e-2", "dlq": "t.dlq:1:17", "replay_count": 2,
        "by": "seqguard dlq replay", "operator": "alice",
    }  # fmt: skip
    e = decode(0, 0, None, key, value)
    assert (e.kind, e.aggregate) == ("replayed", "order-1")


def test_a_replay_of_an_undecodable_record_is_audited_under_its_key_and_without_an_operator() -> None:
    key, value = audit_record(
        dead({"error-class": "deserialization_failed"}, key=b"k-\xff"), "seqguard dlq agent", None, T0
    )
    record = json.loads(value)
    assert record["aggregate"] == "k-\ufffd" and record["seq"] is None and "operator" not in record


def test_the_operator_of_a_replay_is_given_or_the_configured_one_for_the_cli_only() -> None:
    configured = Settings(operator=" bob ")
    assert operator_of(configured, BY_OPERATOR, None) == "bob"
    assert operator_of(configured, BY_OPERATOR, "alice") == "alice"
    assert operator_of(configured, "seqguard dlq agent", None) is None  # the agent is no person
    assert operator_of(Settings(operator=""), BY_OPERATOR, None) is None
