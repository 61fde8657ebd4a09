"""A buffered input record survives its JSON form byte for byte (the reorder buffer stores it as JSON)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.records import InRecord


def through_json(rec: InRecord) -> InRecord:
    return InRecord.from_json(json.loads(json.dumps(rec.to_json())))


def test_null_header_values_survive_the_json_form() -> None:
    # Kafka header values are nullable; a buffered event with one must not stop the worker.
    rec = InRecord("in", 0, 5, 1.5, b"k", b'{"a": 1}', [("traceparent", None), ("h", b"v")])
    assert through_json(rec) == rec


@settings(max_examples=200, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=20)),
    value=st.one_of(st.none(), st.text(max_size=40).map(str.encode)),  # only decodable (UTF-8) values are buffered
    headers=st.lists(st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20))), max_size=5),
    timestamp=st.one_of(st.none(), st.floats(0, 2e9)),
)
def test_any_key_and_headers_survive_the_json_form(key, value, headers, timestamp) -> None:
    rec = InRecord("in", 3, 9, timestamp, key, value, headers)
    assert through_json(rec) == rec
