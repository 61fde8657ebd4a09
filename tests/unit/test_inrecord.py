"""A buffered input record survives the state record byte for byte (keys, values, headers: any bytes)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tables.reorder import Buffered, ReorderBuffer
from tables.state import Aggregate, decode, encode
from workers.records import InRecord


def through_state(rec: InRecord) -> InRecord:
    agg = Aggregate(buffer=ReorderBuffer({2: Buffered(2, "k", "t", 0.0, rec.raw())}))
    record = decode(encode(agg)).buffer.items[2].record
    assert record is not None
    return InRecord(*record)


def test_null_header_values_survive_the_state_record() -> None:
    # Kafka header values are nullable; a buffered event with one must not stop the worker.
    rec = InRecord("in", 0, 5, 1.5, b"k", b'{"a": 1}', [("traceparent", None), ("h", b"v")])
    assert through_state(rec) == rec


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=20)),
    value=st.one_of(st.none(), st.binary(max_size=40)),
    headers=st.lists(st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20))), max_size=5),
    timestamp=st.one_of(st.none(), st.floats(0, 2e9)),
)
def test_any_key_value_and_headers_survive_the_state_record(key, value, headers, timestamp) -> None:
    rec = InRecord("in", 3, 9, timestamp, key, value, headers)
    assert through_state(rec) == rec
