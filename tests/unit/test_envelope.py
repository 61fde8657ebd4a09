"""CloudEvents decoding from raw Kafka bytes: one contract per test.

Pure: every test builds key/value/headers by hand and calls ``workers.envelope``.
Anything decode cannot use must be a DecodeError (the worker dead-letters those);
any other exception would stop the worker on a poison record.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.envelope import (
    STRUCTURED_CONTENT_TYPE,
    Envelope,
    canonical_data_id,
    decode,
    encode_binary,
    encode_structured,
    parse_sequence,
)
from workers.errors import DESERIALIZATION_FAILED, DecodeError

DROP = object()  # an attribute left out of the event
CE = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
KEY = b"order-1"


def attrs(**over: Any) -> dict[str, Any]:
    """Attributes of a valid event (without specversion: the encoders add it)."""
    base: dict[str, Any] = {
        "id": "evt-1",
        "source": "shop/orders",
        "type": "order.created",
        "sequence": 1,
        "data": {"total": 5},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not DROP}


def structured_value(**over: Any) -> bytes:
    """A structured-mode value; ``specversion`` defaults to 1.0 and may be replaced or DROPped."""
    return json.dumps(attrs(**{"specversion": "1.0", **over})).encode()


def decode_structured(key: bytes | None = KEY, **over: Any) -> Envelope:
    return decode(key, structured_value(**over), CE)


def rejects(match: str, key: bytes | None, value: bytes | None, headers: list | None, **kwargs: Any) -> DecodeError:
    with pytest.raises(DecodeError, match=match) as info:
        decode(key, value, headers, **kwargs)
    return info.value


# --------------------------------------------------------------------------- round trips


def test_structured_round_trip_keeps_every_attribute() -> None:
    headers, value = encode_structured(attrs(sequence=7, time="2024-01-01T00:00:00Z", schemaversion=2))
    env = decode(KEY, value, headers)
    assert (env.id, env.source, env.type, env.aggregate_id) == ("evt-1", "shop/orders", "order.created", "order-1")
    assert (env.sequence, env.schema_version, env.data) == (7, 2, {"total": 5})
    assert env.binary is False and env.derived_id is False
    assert env.attributes["time"] == "2024-01-01T00:00:00Z"


def test_binary_round_trip_keeps_every_attribute() -> None:
    headers, value = encode_binary(attrs(sequence=7, schemaversion=2, data={"items": [1, 2], "note": "é"}))
    env = decode(KEY, value, headers)
    assert (env.id, env.source, env.type, env.aggregate_id) == ("evt-1", "shop/orders", "order.created", "order-1")
    assert (env.sequence, env.schema_version, env.data) == (7, 2, {"items": [1, 2], "note": "é"})
    assert env.binary is True
    assert env.attributes["datacontenttype"] == "application/json"


def test_encode_structured_marks_the_value_as_structured_cloudevents() -> None:
    headers, value = encode_structured({"id": "x", "source": "s", "type": "t"})
    assert headers == [("content-type", b"application/cloudevents+json")]
    assert json.loads(value)["specversion"] == "1.0"


def test_encode_binary_puts_context_attributes_in_ce_headers_and_data_in_the_value() -> None:
    headers, value = encode_binary({"id": "x", "source": "s", "type": "t", "sequence": 3, "data": {"a": 1}})
    assert dict(headers) == {
        "ce_specversion": b"1.0",
        "ce_id": b"x",
        "ce_source": b"s",
        "ce_type": b"t",
        "ce_sequence": b"3",
        "content-type": b"application/json",
    }
    assert json.loads(value) == {"a": 1}


def test_binary_mode_is_recognised_by_the_ce_specversion_header_alone() -> None:
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")]
    env = decode(KEY, b'{"a": 1}', headers)
    assert env.binary is True and env.data == {"a": 1}


def test_binary_header_names_are_case_insensitive() -> None:
    headers = [
        ("CE_SpecVersion", b"1.0"),
        ("CE_ID", b"1"),
        ("Ce_Source", b"s"),
        ("ce_TYPE", b"t"),
        ("Content-Type", b"application/json"),
    ]
    env = decode(KEY, b"[1]", headers)
    assert (env.id, env.source, env.type, env.data) == ("1", "s", "t", [1])


def test_binary_mode_repeated_header_last_one_wins() -> None:
    headers, value = encode_binary(attrs(type="first"))
    env = decode(KEY, value, [*headers, ("ce_type", b"second")])
    assert env.type == "second"


def test_binary_mode_non_json_content_type_keeps_data_as_text() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"1"),
        ("ce_source", b"s"),
        ("ce_type", b"t"),
        ("content-type", b"text/plain"),
    ]
    env = decode(KEY, b"not { json", headers)
    assert env.data == "not { json"


def test_binary_mode_json_suffix_content_type_is_parsed_as_json() -> None:
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")]
    env = decode(KEY, b'{"a": 2}', [*headers, ("content-type", b"application/vnd.shop+json; charset=utf-8")])
    assert env.data == {"a": 2}


def test_binary_mode_null_value_has_no_data() -> None:
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"s"), ("ce_type", b"t")]
    env = decode(KEY, None, headers)
    assert env.data is None


def test_structured_mode_needs_no_content_type_header() -> None:
    env = decode(KEY, structured_value(), None)
    assert env.binary is False and env.id == "evt-1"


def test_structured_content_type_with_parameters_is_accepted() -> None:
    env = decode(KEY, structured_value(), [("content-type", b"application/cloudevents+json; charset=utf-8")])
    assert env.binary is False


def test_idempotency_key_is_source_and_id() -> None:
    env = decode_structured()
    assert env.idempotency_key == "shop/orders\x1fevt-1"


# --------------------------------------------------------------------------- aggregate ID


def test_aggregate_id_is_the_kafka_key_without_partitionkey() -> None:
    assert decode_structured(key=b"cart-9").aggregate_id == "cart-9"


def test_partitionkey_overrides_the_kafka_key_in_structured_mode() -> None:
    assert decode_structured(key=b"some-other-key", partitionkey="order-42").aggregate_id == "order-42"


def test_partitionkey_header_overrides_the_kafka_key_in_binary_mode() -> None:
    headers, value = encode_binary(attrs(partitionkey="order-42"))
    assert decode(b"some-other-key", value, headers).aggregate_id == "order-42"


def test_partitionkey_makes_a_non_utf8_key_acceptable() -> None:
    assert decode_structured(key=b"\xff\xfe", partitionkey="order-42").aggregate_id == "order-42"


def test_partitionkey_gives_an_aggregate_to_a_keyless_record() -> None:
    assert decode_structured(key=None, partitionkey="order-42").aggregate_id == "order-42"


# --------------------------------------------------------------------------- sequence


def test_sequence_as_json_integer() -> None:
    assert decode_structured(sequence=42).sequence == 42


def test_sequence_as_decimal_string() -> None:
    assert decode_structured(sequence="42").sequence == 42


def test_sequence_from_binary_header_is_an_integer() -> None:
    headers, value = encode_binary(attrs(sequence=12345))
    assert decode(KEY, value, headers).sequence == 12345


def test_missing_sequence_is_none() -> None:
    assert decode_structured(sequence=DROP).sequence is None


def test_sequence_equal_to_the_maximum_is_accepted() -> None:
    assert parse_sequence(100, 100) == 100


def test_sequence_null_is_none() -> None:
    assert parse_sequence(None, 100) is None


def test_sequence_bool_is_rejected() -> None:
    with pytest.raises(DecodeError, match="sequence is not an integer: True"):
        parse_sequence(True, 100)


def test_sequence_float_is_rejected() -> None:
    with pytest.raises(DecodeError, match="sequence is not an integer: float"):
        parse_sequence(3.0, 100)


def test_sequence_zero_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"sequence out of range 1\.\.100: 0"):
        parse_sequence(0, 100)


def test_sequence_negative_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"sequence out of range 1\.\.100: -1"):
        parse_sequence(-1, 100)


def test_sequence_negative_string_is_rejected() -> None:
    with pytest.raises(DecodeError, match="sequence is not a decimal integer"):
        parse_sequence("-1", 100)


def test_sequence_above_the_maximum_is_rejected() -> None:
    with pytest.raises(DecodeError, match=r"sequence out of range 1\.\.100: 101"):
        parse_sequence(101, 100)


def test_sequence_decimal_string_above_the_maximum_is_rejected() -> None:
    with pytest.raises(DecodeError, match="sequence out of range"):
        parse_sequence("101", 100)


def test_sequence_string_of_more_than_20_digits_is_rejected() -> None:
    with pytest.raises(DecodeError, match="sequence is not a decimal integer"):
        parse_sequence("1" * 21, 2**200)


def test_sequence_non_decimal_string_is_rejected() -> None:
    with pytest.raises(DecodeError, match="sequence is not a decimal integer: '1.5'"):
        parse_sequence("1.5", 100)


def test_decode_applies_max_sequence() -> None:
    rejects("sequence out of range 1..10: 11", KEY, structured_value(sequence=11), CE, max_sequence=10)


def test_decode_rejects_a_bool_sequence() -> None:
    rejects("sequence is not an integer", KEY, structured_value(sequence=True), CE)


# --------------------------------------------------------------------------- schema version


def test_schema_version_defaults_to_one() -> None:
    assert decode_structured().schema_version == 1


def test_schema_version_from_binary_header_is_an_integer() -> None:
    headers, value = encode_binary(attrs(schemaversion=3))
    assert decode(KEY, value, headers).schema_version == 3


def test_schema_version_word_is_rejected() -> None:
    rejects("schemaversion is not an integer: 'two'", KEY, structured_value(schemaversion="two"), CE)


def test_schema_version_list_is_rejected() -> None:
    rejects("schemaversion is not an integer", KEY, structured_value(schemaversion=[2]), CE)


def test_schema_version_fraction_is_rejected_not_truncated() -> None:
    rejects("schemaversion is not an integer: '1.5'", KEY, structured_value(schemaversion=1.5), CE)


def test_schema_version_bool_is_rejected() -> None:
    rejects("schemaversion is not an integer: 'True'", KEY, structured_value(schemaversion=True), CE)


def test_schema_version_infinity_is_rejected() -> None:
    value = structured_value(schemaversion=2).replace(b'"schemaversion": 2', b'"schemaversion": Infinity')
    rejects("schemaversion is not an integer: 'inf'", KEY, value, CE)


# --------------------------------------------------------------------------- rejections


def test_every_decode_error_is_a_permanent_deserialization_failure() -> None:
    error = rejects("not JSON", KEY, b"{", CE)
    assert error.error_class == DESERIALIZATION_FAILED and error.permanent is True


def test_value_not_utf8_is_rejected() -> None:
    rejects("structured event is not UTF-8: invalid start byte at byte 0", KEY, b"\xff" + structured_value(), CE)


def test_value_not_json_is_rejected() -> None:
    rejects("structured event is not JSON: Expecting property name", KEY, b"{not json", CE)


def test_json_array_is_rejected() -> None:
    rejects("structured event is a JSON list, not an object", KEY, b'[{"specversion": "1.0"}]', CE)


def test_json_scalar_is_rejected() -> None:
    rejects("structured event is a JSON int, not an object", KEY, b"42", CE)


def test_missing_specversion_is_rejected() -> None:
    message = "not a CloudEvent: no specversion in the value nor a ce_specversion header"
    rejects(message, KEY, structured_value(specversion=DROP), CE)
    rejects(message, KEY, structured_value(specversion=DROP), [("content-type", b"application/json")])
    rejects(message, KEY, structured_value(specversion=DROP), None)


def test_empty_specversion_is_rejected() -> None:
    rejects("missing or empty CloudEvents attribute 'specversion'", KEY, structured_value(specversion=""), None)


def test_missing_type_is_rejected() -> None:
    rejects("missing or empty CloudEvents attribute 'type'", KEY, structured_value(type=DROP), CE)


def test_empty_type_is_rejected() -> None:
    rejects("missing or empty CloudEvents attribute 'type'", KEY, structured_value(type=""), CE)


def test_missing_source_is_rejected() -> None:
    rejects("missing or empty CloudEvents attribute 'source'", KEY, structured_value(source=DROP), CE)


def test_non_string_source_is_rejected() -> None:
    rejects("missing or empty CloudEvents attribute 'source'", KEY, structured_value(source=7), CE)


def test_wrong_specversion_is_rejected() -> None:
    rejects("unsupported specversion '0.3'", KEY, structured_value(specversion="0.3"), CE)


def test_binary_mode_wrong_specversion_is_rejected() -> None:
    headers, value = encode_binary(attrs(specversion="2.0"))
    rejects("unsupported specversion '2.0'", KEY, value, headers)


def test_non_utf8_key_without_partitionkey_is_rejected() -> None:
    rejects("key is not UTF-8", b"\xffkey", structured_value(), CE)


def test_record_without_key_or_partitionkey_is_rejected() -> None:
    rejects("no aggregate ID: neither a partitionkey attribute nor a record key", None, structured_value(), CE)


def test_empty_key_without_partitionkey_is_rejected() -> None:
    rejects("no aggregate ID", b"", structured_value(), CE)


def test_non_string_partitionkey_is_rejected() -> None:
    rejects("no aggregate ID", KEY, structured_value(partitionkey=42), CE)


def test_missing_id_is_rejected_when_ids_are_not_derived() -> None:
    rejects("missing or empty CloudEvents attribute 'id'", KEY, structured_value(id=DROP), CE, derive_ids=False)


def test_empty_id_is_rejected_when_ids_are_not_derived() -> None:
    rejects("missing or empty CloudEvents attribute 'id'", KEY, structured_value(id=""), CE, derive_ids=False)


def test_non_string_id_is_rejected() -> None:
    rejects("attribute 'id' is not a string", KEY, structured_value(id=17), CE)


def test_oversized_record_is_rejected() -> None:
    value = structured_value(data={"blob": "x" * 200})
    rejects(f"record of {len(value)} bytes exceeds the limit of 100", KEY, value, CE, max_bytes=100)


def test_record_exactly_at_the_size_limit_is_accepted() -> None:
    value = structured_value()
    assert decode(KEY, value, CE, max_bytes=len(value)).id == "evt-1"


def test_empty_record_without_ce_headers_is_rejected() -> None:
    rejects("empty record: no value and no ce_ headers", KEY, None, [("traceparent", b"00-abc")])


def test_structured_event_is_accepted_whatever_its_content_type() -> None:
    # Real producers label structured events application/json (the SDK's 1.x API) or anything else.
    for ctype in (b"application/json", b"application/json; charset=utf-8", b"text/plain", b"application/avro"):
        env = decode(KEY, structured_value(), [("content-type", ctype)])
        assert env.binary is False and env.id == "evt-1" and env.data == {"total": 5}


def test_json_object_without_specversion_is_not_an_event_whatever_its_content_type() -> None:
    value = json.dumps({"id": "1", "source": "s", "type": "t", "total": 5}).encode()
    for headers in ([("content-type", b"application/json")], CE, None):
        rejects("not a CloudEvent", KEY, value, headers)


def test_ce_headers_without_ce_specversion_do_not_make_binary_mode() -> None:
    # Binary mode is the ce_specversion header; a stray ce_type alone leaves a structured value.
    env = decode(KEY, structured_value(), [("ce_type", b"other"), ("content-type", b"application/json")])
    assert env.binary is False and env.type == "order.created"
    rejects("not a CloudEvent", KEY, b'{"total": 5}', [("ce_type", b"t"), ("ce_source", b"s"), ("ce_id", b"1")])


def test_data_base64_is_rejected() -> None:
    rejects("data_base64 is not supported", KEY, structured_value(data=DROP, data_base64="aGk="), CE)


def test_binary_header_not_utf8_is_rejected() -> None:
    headers, value = encode_binary(attrs())
    rejects("header ce_type is not UTF-8", KEY, value, [*headers, ("ce_type", b"\xc3(")])


def test_binary_data_not_json_is_rejected() -> None:
    headers, _ = encode_binary(attrs())
    rejects("binary-mode data is not JSON", KEY, b"{oops", headers)


def test_null_ce_header_value_is_rejected() -> None:
    headers, value = encode_binary(attrs())
    rejects("header ce_source is null", KEY, value, [*headers, ("ce_source", None)])


def test_null_content_type_value_counts_as_no_content_type() -> None:
    headers, value = encode_binary(attrs())
    env = decode(KEY, value, [*headers, ("content-type", None)])
    assert env.data == {"total": 5} and "datacontenttype" not in env.attributes


def test_null_unrelated_header_value_is_ignored() -> None:
    assert decode(KEY, structured_value(), [*CE, ("traceparent", None)]).id == "evt-1"


def test_json_nested_deeper_than_python_can_parse_is_rejected() -> None:
    rejects("structured event is not usable JSON", KEY, b"[" * 100_000 + b"]" * 100_000, CE)


def test_data_nested_100k_levels_deep_is_rejected_in_structured_mode() -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    value = structured_value(data=DROP)[:-1] + b', "data": ' + nested + b"}"
    rejects("structured event is not usable JSON", KEY, value, CE)


def test_data_nested_100k_levels_deep_is_rejected_in_binary_mode() -> None:
    headers, _ = encode_binary(attrs())
    rejects("binary-mode data is not usable JSON", KEY, b"[" * 100_000 + b"]" * 100_000, headers)


def test_empty_value_is_rejected_in_both_modes() -> None:
    rejects("structured event is not JSON", KEY, b"", CE)
    rejects("binary-mode data is not JSON", KEY, b"", encode_binary(attrs())[0])


def test_sequence_of_an_integral_float_or_an_overflowing_number_is_rejected() -> None:
    for raw in (b"1.0", b"1e400", b"-1", b"true"):
        value = structured_value().replace(b'"sequence": 1', b'"sequence": ' + raw)
        rejects("sequence", KEY, value, CE)


# --------------------------------------------------------------------------- header keys and values not UTF-8
# aiokafka, as workers/kafka/patches.py patches it, reads a header key that is not UTF-8 with
# surrogateescape: b"x-\xff\xfe" arrives as "x-\udcff\udcfe".


def test_header_key_not_utf8_is_rejected_and_shown_escaped() -> None:
    rejects(r"header key 'x-\\\\xff\\\\xfe' is not UTF-8", KEY, structured_value(), [*CE, ("x-\udcff\udcfe", b"1")])


def test_ce_header_key_not_utf8_is_rejected_in_binary_mode() -> None:
    headers, value = encode_binary(attrs())
    rejects("header key .* is not UTF-8", KEY, value, [*headers, ("ce_\udcff", b"1")])


def test_non_ascii_utf8_header_key_is_accepted() -> None:
    assert decode(KEY, structured_value(), [*CE, ("trace-é", b"1")]).id == "evt-1"


def test_unrelated_header_value_not_utf8_is_ignored() -> None:
    assert decode(KEY, structured_value(), [*CE, ("traceparent", b"\xff\xfe")]).id == "evt-1"
    headers, value = encode_binary(attrs())
    assert decode(KEY, value, [*headers, ("x-bin", b"\x80")]).id == "evt-1"


def test_ce_header_value_not_utf8_is_a_decode_error_not_a_unicode_error() -> None:
    headers, value = encode_binary(attrs())
    error = rejects("header ce_type is not UTF-8", KEY, value, [*headers, ("ce_type", b"\xff\xfe")])
    assert not isinstance(error, UnicodeError)


def test_content_type_not_utf8_is_rejected_in_binary_mode_and_ignored_in_structured_mode() -> None:
    headers, value = encode_binary(attrs())
    rejects("content-type is not UTF-8", KEY, value, [*headers, ("content-type", b"\xff")])
    # Structured mode does not read the content-type (the value says what it is).
    assert decode(KEY, structured_value(), [("content-type", b"\xff")]).id == "evt-1"


def test_json_integer_too_long_to_convert_is_rejected() -> None:
    value = structured_value().replace(b'"sequence": 1', b'"sequence": ' + b"9" * 5000)
    rejects("structured event is not usable JSON", KEY, value, CE)


def test_lone_surrogate_in_partitionkey_is_rejected() -> None:
    value = structured_value(partitionkey="PK").replace(b'"PK"', b'"a\\ud800"')
    rejects("aggregate ID contains a lone surrogate", KEY, value, CE)


def test_lone_surrogate_in_id_is_rejected() -> None:
    value = structured_value(id="ID").replace(b'"ID"', b'"\\udfff"')
    rejects("id contains a lone surrogate", KEY, value, CE)


def test_non_ascii_identities_are_accepted() -> None:
    env = decode_structured(partitionkey="commande-é", id="évt", source="boutique/ü", type="commande.créée")
    assert (env.aggregate_id, env.id, env.source, env.type) == ("commande-é", "évt", "boutique/ü", "commande.créée")


# --------------------------------------------------------------------------- derived ids


def test_missing_id_is_sha256_of_canonical_data() -> None:
    env = decode_structured(id=DROP, data={"b": 1, "a": "é"})
    assert env.id == hashlib.sha256('{"a":"é","b":1}'.encode()).hexdigest()
    assert env.derived_id is True


def test_empty_id_is_derived_too() -> None:
    env = decode_structured(id="", data={"a": 1})
    assert env.id == canonical_data_id({"a": 1}) and env.derived_id is True


def test_derived_id_is_the_same_for_differently_ordered_keys() -> None:
    one = decode(KEY, b'{"specversion":"1.0","type":"t","source":"s","data":{"a":1,"b":{"x":1,"y":2}}}', CE)
    two = decode(KEY, b'{"data":{"b":{"y":2,"x":1},"a":1},"source":"s","type":"t","specversion":"1.0"}', CE)
    assert one.id == two.id


def test_derived_id_ignores_envelope_metadata() -> None:
    one = decode_structured(id=DROP, time="2024-01-01T00:00:00Z", sequence=1, source="a")
    two = decode_structured(id=DROP, time="2025-06-30T12:00:00Z", sequence=2, source="b")
    assert one.id == two.id


def test_derived_id_differs_for_different_data() -> None:
    assert decode_structured(id=DROP, data={"a": 1}).id != decode_structured(id=DROP, data={"a": 2}).id


def test_binary_and_structured_events_with_the_same_data_derive_the_same_id() -> None:
    headers, value = encode_binary(attrs(id=DROP, data={"z": [1, 2], "a": None}))
    assert decode(KEY, value, headers).id == decode_structured(id=DROP, data={"a": None, "z": [1, 2]}).id


def test_derived_id_of_data_with_a_lone_surrogate_is_stable() -> None:
    value = structured_value(id=DROP, data={"note": "N"}).replace(b'"N"', b'"\\ud800"')
    first, second = decode(KEY, value, CE), decode(KEY, value, CE)
    assert first.id == second.id and len(first.id) == 64


def test_given_id_is_kept_and_not_marked_derived() -> None:
    env = decode_structured(id="mine")
    assert env.id == "mine" and env.derived_id is False


# --------------------------------------------------------------------------- properties

HEADER_NAMES = st.sampled_from(
    [
        "ce_specversion",
        "ce_id",
        "ce_source",
        "ce_type",
        "ce_sequence",
        "ce_partitionkey",
        "ce_schemaversion",
        "content-type",
        "CE_Type",
        "x-other",
    ]
)
HEADER_VALUES = st.one_of(
    st.none(),
    st.binary(max_size=30),
    st.sampled_from([b"1.0", b"application/cloudevents+json", b"application/json", b"text/plain", b"7", b"-1", b"x"]),
)
HEADERS = st.one_of(
    st.none(), st.lists(st.tuples(st.one_of(HEADER_NAMES, st.text(max_size=10)), HEADER_VALUES), max_size=8)
)

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=10)  # lone surrogates included
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
ATTR_NAMES = st.sampled_from(
    ["specversion", "id", "source", "type", "sequence", "partitionkey", "schemaversion", "data", "data_base64", "time"]
)


def _decode_or_decode_error(key: bytes | None, value: bytes | None, headers: list | None) -> None:
    try:
        env = decode(key, value, headers, max_sequence=1_000)
    except DecodeError as exc:
        assert str(exc)
    else:
        assert env.aggregate_id and env.id and env.source and env.type
        assert env.sequence is None or 1 <= env.sequence <= 1_000


@settings(max_examples=400, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=20)),
    value=st.one_of(st.none(), st.binary(max_size=200)),
    headers=HEADERS,
)
def test_decode_of_arbitrary_bytes_raises_nothing_but_decode_error(key, value, headers) -> None:
    _decode_or_decode_error(key, value, headers)


@settings(max_examples=400, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=10), st.just(KEY)),
    doc=st.dictionaries(ATTR_NAMES, JSON | st.sampled_from(["1.0", "s", "5", ""]), max_size=10),
    headers=HEADERS,
)
def test_decode_of_arbitrary_json_objects_raises_nothing_but_decode_error(key, doc, headers) -> None:
    value = json.dumps(doc).encode()  # floats may be NaN / Infinity, as Python's json accepts them
    _decode_or_decode_error(key, value, headers)
    _decode_or_decode_error(key, value, [("content-type", STRUCTURED_CONTENT_TYPE.encode())])


@settings(max_examples=200, deadline=None)
@given(
    attributes=st.dictionaries(ATTR_NAMES, st.text(max_size=8) | st.integers(-3, 3), max_size=9),
    data=st.binary(max_size=40),
)
def test_decode_of_arbitrary_binary_mode_headers_raises_nothing_but_decode_error(attributes, data) -> None:
    headers = [("ce_specversion", b"1.0")] + [(f"ce_{k}", str(v).encode()) for k, v in attributes.items()]
    _decode_or_decode_error(KEY, data, headers)


@settings(max_examples=200, deadline=None)
@given(
    source=st.text(min_size=1, max_size=20),
    type_=st.text(min_size=1, max_size=20),
    event_id=st.text(min_size=1, max_size=20),
    aggregate=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20
    ),
    sequence=st.integers(1, 2**53),
    data=JSON.filter(lambda d: d == d),  # NaN is not equal to itself
    binary=st.booleans(),
)
def test_encoded_events_decode_to_the_same_attributes(
    source, type_, event_id, aggregate, sequence, data, binary
) -> None:
    encode = encode_binary if binary else encode_structured
    headers, value = encode(
        {"id": event_id, "source": source, "type": type_, "partitionkey": aggregate, "sequence": sequence, "data": data}
    )
    env = decode(None, value, headers)
    assert (env.id, env.source, env.type, env.aggregate_id, env.sequence) == (
        event_id,
        source,
        type_,
        aggregate,
        sequence,
    )
    assert json.dumps(env.data, sort_keys=True) == json.dumps(data, sort_keys=True)
    assert env.binary is binary


@given(data=st.dictionaries(st.text(max_size=6), JSON, max_size=6))
def test_canonical_data_id_ignores_key_order(data) -> None:
    reordered = dict(reversed(list(data.items())))
    assert canonical_data_id(reordered) == canonical_data_id(data)


# --------------------------------------------------------------------------- events made by the CloudEvents SDK
# The Python SDK's 1.x API (cloudevents.kafka; cloudevents.v1.kafka in 2.x) writes a structured
# event's datacontenttype into the content-type header (application/json), or no header at all
# (sdk-python#238); its 2.x core API writes application/cloudevents+json. All are structured.


def sdk_v1() -> tuple[Any, Any, Any]:
    """CloudEvent, to_structured and to_binary of the SDK's 1.x API, under either package layout."""
    try:
        from cloudevents.v1.http import CloudEvent
        from cloudevents.v1.kafka import to_binary, to_structured
    except ImportError:  # cloudevents < 2
        from cloudevents.http import CloudEvent  # type: ignore[no-redef]
        from cloudevents.kafka import to_binary, to_structured  # type: ignore[no-redef]
    return CloudEvent, to_structured, to_binary


def as_record(message: Any) -> tuple[bytes | None, list[tuple[str, bytes]], bytes]:
    """An SDK KafkaMessage as aiokafka hands a record over: bytes key, a list of header tuples."""
    key = message.key.encode() if isinstance(message.key, str) else message.key
    return key, list(message.headers.items()), message.value


SDK_ATTRS = {"type": "order.paid", "source": "shop/orders", "id": "sdk-1", "partitionkey": "order-9"}


def test_sdk_v1_structured_event_labelled_application_json_is_decoded() -> None:
    cloud_event, to_structured, _ = sdk_v1()
    event = cloud_event({**SDK_ATTRS, "sequence": 3, "datacontenttype": "application/json"}, {"amount": 5})
    key, headers, value = as_record(to_structured(event))
    assert headers == [("content-type", b"application/json")]  # what the SDK really sends
    env = decode(key, value, headers)
    assert (env.binary, env.id, env.type, env.aggregate_id) == (False, "sdk-1", "order.paid", "order-9")
    assert (env.sequence, env.data) == (3, {"amount": 5})


def test_sdk_v1_structured_event_without_content_type_is_decoded() -> None:
    cloud_event, to_structured, _ = sdk_v1()
    key, headers, value = as_record(to_structured(cloud_event({**SDK_ATTRS, "sequence": 4}, {"amount": 6})))
    assert headers == []
    env = decode(key, value, headers)
    assert (env.binary, env.sequence, env.data) == (False, 4, {"amount": 6})


def test_sdk_v1_binary_event_is_decoded() -> None:
    cloud_event, _, to_binary = sdk_v1()
    # The 1.x API writes header values with str.encode: extensions must be strings.
    event = cloud_event({**SDK_ATTRS, "sequence": "5", "datacontenttype": "application/json"}, {"amount": 7})
    key, headers, value = as_record(to_binary(event))
    env = decode(key, value, headers)
    assert (env.binary, env.id, env.aggregate_id) == (True, "sdk-1", "order-9")
    assert (env.sequence, env.data) == (5, {"amount": 7})


def sdk_core() -> tuple[Any, Any, Any]:
    pytest.importorskip("cloudevents.core.bindings.kafka", reason="the SDK's core API (cloudevents >= 2)")
    from cloudevents.core.bindings import kafka
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    return CloudEvent, kafka, JSONFormat()


@pytest.mark.parametrize("mode", ["structured", "binary"])
def test_sdk_core_events_are_decoded_as_the_sdk_reads_them(mode: str) -> None:
    cloud_event, kafka, fmt = sdk_core()
    event = cloud_event(
        attributes={**SDK_ATTRS, "sequence": 6, "datacontenttype": "application/json"}, data={"amount": 8}
    )
    message = (kafka.to_structured if mode == "structured" else kafka.to_binary)(event, fmt)
    key, headers, value = as_record(message)
    env = decode(key, value, headers)
    back = kafka.from_kafka(message, fmt)  # the SDK's own reading of the same record
    assert env.binary is (mode == "binary")
    assert (env.id, env.source, env.type) == (back.get_id(), back.get_source(), back.get_type())
    assert env.aggregate_id == "order-9" and env.sequence == 6 and env.data == back.get_data() == {"amount": 8}


@settings(max_examples=200, deadline=None)
@given(content_type=st.one_of(st.none(), st.binary(max_size=40), HEADER_VALUES), sequence=st.integers(1, 1_000))
def test_a_structured_event_decodes_the_same_whatever_its_content_type(content_type, sequence) -> None:
    value = structured_value(sequence=sequence)
    reference = decode(KEY, value, None)
    env = decode(KEY, value, [("content-type", content_type)])
    assert (env.id, env.sequence, env.data, env.binary) == (reference.id, sequence, reference.data, False)


def test_an_aggregate_id_with_a_nul_is_refused() -> None:
    """Faust's RocksDB store keeps its checkpoint under ``__faust\\0offset__``: no aggregate may be named so."""
    headers, value = encode_structured(
        {"id": "e1", "source": "s", "type": "t", "sequence": 1, "partitionkey": "__faust\x00offset__"}
    )
    with pytest.raises(DecodeError, match="NUL"):
        decode(b"k", value, headers)
