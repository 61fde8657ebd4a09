"""CloudEvents 1.0 over Kafka (the Kafka protocol binding), decoded from raw bytes.

Both modes are accepted, told apart by one rule:
* binary: a ``ce_specversion`` header; context attributes in ``ce_*`` headers, the value is the data;
* structured: otherwise; the value is the whole event as a JSON object with ``specversion``,
  whatever the ``content-type`` header says, or without one. The binding names
  application/cloudevents+json, but real producers send application/json (the Python SDK 1.x
  API writes the data's content type there) or no header at all (cloudevents/spec#812).

seqguard decodes raw bytes itself, so a bad record becomes a DecodeError that the worker
dead-letters, instead of an error inside Faust (which would ack it and lose it).
Hand-written rather than the ``cloudevents`` SDK: the SDK builds a full event object
and validates through extra layers per record; benchmarks/envelope_cost.py measures both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from workers.errors import DecodeError
from workers.records import wire_key_text

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
SEQUENCE_ATTR = "sequence"
PARTITION_KEY_ATTR = "partitionkey"
SCHEMA_VERSION_ATTR = "schemaversion"
REQUIRED = ("specversion", "type", "source")
#: Longest id, source, type or aggregate ID: they are stored per aggregate (seen IDs, buffers).
MAX_ATTRIBUTE_CHARS = 512
_MISSING = object()
#: msgspec reads JSON about 3x faster than ``json.loads`` and is never more lenient (it refuses
#: NaN, lone surrogates, integers past 64 bits...). What it refuses is read again by ``json``,
#: so every record gets exactly the standard library's result or error, at msgspec's speed.
_fast_json = msgspec.json.Decoder()
_FAST_JSON_REFUSALS = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)


@dataclass(slots=True)
class Envelope:
    id: str
    source: str
    type: str
    aggregate_id: str
    sequence: int | None
    data: Any
    schema_version: int = 1
    binary: bool = False
    attributes: dict[str, Any] = field(default_factory=dict)
    derived_id: bool = False  # the id was computed from the data

    @property
    def idempotency_key(self) -> str:
        return f"{self.source}\x1f{self.id}"


def canonical_data_id(data: Any) -> str:
    """A deterministic id for an event without one: SHA-256 of its canonical data."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: JSON text may escape a lone surrogate (\ud800), which strict UTF-8 cannot encode.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def parse_sequence(raw: Any, max_sequence: int) -> int | None:
    """The ``sequence`` extension: an integer, or a decimal integer string, in 1..max."""
    if raw is None or raw is _MISSING:
        return None
    if isinstance(raw, bool):
        raise DecodeError(f"sequence is not an integer: {raw!r}")
    if isinstance(raw, str):
        text = raw.strip()
        if not text.isdecimal() or len(text) > 20:
            raise DecodeError(f"sequence is not a decimal integer: {raw[:40]!r}")
        raw = int(text)
    if not isinstance(raw, int):
        raise DecodeError(f"sequence is not an integer: {type(raw).__name__}")
    if not 1 <= raw <= max_sequence:
        raise DecodeError(f"sequence out of range 1..{max_sequence}: {raw}")
    return raw


def _header_map(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, bytes | None]:
    # Repeated keys: the last one wins, as in most Kafka header readers.
    if not headers:
        return {}
    hmap = {k.lower(): v for k, v in headers}
    if not all(name.isascii() for name in hmap):
        for name in hmap:
            _check_header_key(name)
    return hmap


def _check_header_key(name: str) -> None:
    """A key that was not UTF-8 on the wire arrives with surrogate escapes (workers/kafka/patches.py).
    No producer writes it back as it was (keys are encoded as UTF-8), so the event cannot be applied."""
    try:
        name.encode()
    except UnicodeEncodeError:
        raise DecodeError(f"header key {wire_key_text(name)[:80]!r} is not UTF-8") from None


def _text(raw: bytes | None, what: str) -> str:
    if raw is None:  # Kafka header values are nullable
        raise DecodeError(f"{what} is null")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None


def _load_json(raw: bytes, what: str) -> Any:
    try:
        return _fast_json.decode(raw)
    except _FAST_JSON_REFUSALS:
        pass
    text = _text(raw, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(f"{what} is not JSON: {exc.msg} at {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
        raise DecodeError(f"{what} is not usable JSON: {str(exc)[:80]}") from None


def _binary_attributes(value: bytes | None, hmap: dict[str, bytes | None]) -> dict[str, Any]:
    """Binary mode: context attributes from the ``ce_*`` headers, the value is the data."""
    attrs: dict[str, Any] = {
        name[3:]: _text(raw, f"header {name}") for name, raw in hmap.items() if name.startswith("ce_")
    }
    ctype = hmap.get("content-type")
    if ctype is not None:
        attrs["datacontenttype"] = _text(ctype, "content-type")
    if value is None:
        attrs["data"] = None
    elif attrs.get("datacontenttype", "application/json").split(";")[0].strip().endswith("json"):
        attrs["data"] = _load_json(value, "binary-mode data")
    else:
        attrs["data"] = _text(value, "binary-mode data")
    return attrs


def _structured_attributes(value: bytes | None) -> dict[str, Any]:
    """Structured mode: the value is the whole event as a JSON object. Its content-type is not
    read: a JSON object with ``specversion`` is the event whatever the header says."""
    if value is None:
        raise DecodeError("empty record: no value and no ce_ headers")
    doc = _load_json(value, "structured event")
    if not isinstance(doc, dict):
        raise DecodeError(f"structured event is a JSON {type(doc).__name__}, not an object")
    if "specversion" not in doc:
        raise DecodeError("not a CloudEvent: no specversion in the value nor a ce_specversion header")
    return doc


def _attributes(value: bytes | None, hmap: dict[str, bytes | None]) -> tuple[dict[str, Any], bool]:
    """The event's attributes (data included under ``data``), and whether it came in binary mode."""
    if "ce_specversion" in hmap:
        return _binary_attributes(value, hmap), True
    return _structured_attributes(value), False


def _check_context(attrs: dict[str, Any]) -> None:
    """The required attributes are non-empty strings, the spec version is 1.0, the data is not base64."""
    for name in REQUIRED:
        if not isinstance(attrs.get(name), str) or not attrs[name]:
            raise DecodeError(f"missing or empty CloudEvents attribute {name!r}")
    if attrs["specversion"] != "1.0":
        raise DecodeError(f"unsupported specversion {attrs['specversion'][:20]!r}")
    if attrs.get("data") is None and "data_base64" in attrs:
        raise DecodeError("data_base64 is not supported: seqguard events carry JSON data")


def _event_id(raw: Any, data: Any, derive_ids: bool) -> tuple[str, bool]:
    """The event id, and whether it was derived from the data (when the event has none)."""
    if raw is None or raw == "":
        if not derive_ids:
            raise DecodeError("missing or empty CloudEvents attribute 'id'")
        return canonical_data_id(data), True
    if not isinstance(raw, str):
        raise DecodeError("attribute 'id' is not a string")
    return raw, False


def _aggregate_id(raw: Any, key: bytes | None) -> str:
    """The ``partitionkey`` attribute, or else the record key."""
    aggregate = raw
    if aggregate is None:
        aggregate = _text(key, "key") if key else None
    if not aggregate or not isinstance(aggregate, str):
        raise DecodeError("no aggregate ID: neither a partitionkey attribute nor a record key")
    return aggregate


def _check_identities(identities: Iterable[tuple[str, str]]) -> None:
    """Each identity is at most MAX_ATTRIBUTE_CHARS long and encodable as UTF-8."""
    for what, text in identities:
        if len(text) > MAX_ATTRIBUTE_CHARS:
            raise DecodeError(f"{what} is longer than {MAX_ATTRIBUTE_CHARS} characters")
        if not text.isascii():
            try:  # JSON text may escape a lone surrogate, which no key or Redis name can carry
                text.encode()
            except UnicodeEncodeError:
                raise DecodeError(f"{what} contains a lone surrogate") from None


def _schema_version(raw: Any) -> int:
    """The ``schemaversion`` extension as an integer (1 when absent)."""
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        # int() would truncate 1.5 to 1, and fail on an infinity with OverflowError
        raise DecodeError(f"schemaversion is not an integer: {str(raw)[:20]!r}")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise DecodeError(f"schemaversion is not an integer: {str(raw)[:20]!r}") from None


def decode(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    *,
    max_sequence: int = 2**53,
    max_bytes: int = 1_000_000,
    derive_ids: bool = True,
) -> Envelope:
    """Decode one Kafka record into an Envelope, or raise DecodeError saying why not."""
    if value is not None and len(value) > max_bytes:
        raise DecodeError(f"record of {len(value)} bytes exceeds the limit of {max_bytes}")
    attrs, binary = _attributes(value, _header_map(headers))
    source: str = attrs.get("source")  # type: ignore[assignment] # checked next
    type_: str = attrs.get("type")  # type: ignore[assignment]
    # The common case in one expression; _check_context finds and names what is wrong.
    if not (
        type(source) is str  # noqa: E721 - exact types: what a JSON decoder or a header gives
        and type(type_) is str  # noqa: E721
        and source
        and type_
        and attrs.get("specversion") == "1.0"
        and (attrs.get("data") is not None or "data_base64" not in attrs)
    ):
        _check_context(attrs)
    data = attrs.get("data")
    event_id, derived = _event_id(attrs.get("id"), data, derive_ids)
    aggregate = _aggregate_id(attrs.get(PARTITION_KEY_ATTR), key)
    # The common case in two C-level checks; the slow path finds and names the offender.
    longest = max(len(aggregate), len(event_id), len(source), len(type_))
    if longest > MAX_ATTRIBUTE_CHARS or not (aggregate + event_id + source + type_).isascii() or "\0" in aggregate:
        if "\0" in aggregate:  # a state store key (Faust's RocksDB store keeps its offset under one with NUL)
            raise DecodeError("aggregate ID contains a NUL character")
        _check_identities((("aggregate ID", aggregate), ("id", event_id), ("source", source), ("type", type_)))
    raw_seq = attrs.get(SEQUENCE_ATTR)
    if type(raw_seq) is int and 1 <= raw_seq <= max_sequence:  # noqa: E721 - bool is an int too, and is refused
        sequence: int | None = raw_seq
    else:
        sequence = parse_sequence(raw_seq, max_sequence)
    raw_version = attrs.get(SCHEMA_VERSION_ATTR, 1)
    version = raw_version if type(raw_version) is int else _schema_version(raw_version)  # noqa: E721
    return Envelope(event_id, source, type_, aggregate, sequence, data, version, binary, attrs, derived)


def encode_structured(attributes: dict[str, Any]) -> tuple[list[tuple[str, bytes]], bytes]:
    """Headers and value of a structured-mode record (used by the demo, tests, benchmarks)."""
    body = {"specversion": "1.0", **attributes}
    return [("content-type", STRUCTURED_CONTENT_TYPE.encode())], json.dumps(body).encode()


def encode_binary(attributes: dict[str, Any]) -> tuple[list[tuple[str, bytes]], bytes]:
    """Headers and value of a binary-mode record: ``ce_*`` headers, data as the value."""
    attrs = {"specversion": "1.0", **attributes}
    data = attrs.pop("data", None)
    headers = [(f"ce_{k}", str(v).encode()) for k, v in attrs.items()]
    headers.append(("content-type", b"application/json"))
    return headers, json.dumps(data).encode()
