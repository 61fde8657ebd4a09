"""The DLQ record format: the original key, value and headers untouched, plus seqguard headers.

Headers seqguard adds all start with ``seqguard-``; they are stripped before a record is
republished, so a replayed event carries its producer's headers plus the replay ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from workers.records import InRecord, wire_key_text

PREFIX = "seqguard-"
ORIGINAL_TOPIC = "seqguard-original-topic"
ORIGINAL_PARTITION = "seqguard-original-partition"
ORIGINAL_OFFSET = "seqguard-original-offset"
ORIGINAL_TIMESTAMP = "seqguard-original-timestamp"
AGGREGATE_ID = "seqguard-aggregate-id"
SEQUENCE = "seqguard-sequence"
EVENT_TYPE = "seqguard-event-type"
EVENT_ID = "seqguard-event-id"
ERROR_CLASS = "seqguard-error-class"
ERROR_MESSAGE = "seqguard-error-message"
ATTEMPTS = "seqguard-attempts"
FIRST_FAILURE = "seqguard-first-failure"
LAST_FAILURE = "seqguard-last-failure"
REPLAY_COUNT = "seqguard-replay-count"
WORKER_ID = "seqguard-worker-id"
#: On a republished record: which DLQ record it came from (topic:partition:offset).
REPLAYED_FROM = "seqguard-replayed-from"


@dataclass(slots=True)
class Failure:
    """What the worker knows when it dead-letters a record."""

    error_class: str
    message: str
    attempts: int = 1
    aggregate_id: str = ""
    sequence: int | None = None
    event_type: str = ""
    event_id: str = ""


def original_headers(headers: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """The producer's headers, values untouched. A key that was not UTF-8 on the wire cannot be
    written back as it was (producers encode keys as UTF-8): its bytes become ``\\xNN`` escapes."""
    return [(wire_key_text(k), v) for k, v in headers if not k.startswith(PREFIX)]


def header(headers: Iterable[tuple[str, bytes | None]], name: str) -> str | None:
    found = None
    for k, v in headers:
        if k == name and v is not None:  # Kafka header values are nullable
            found = v.decode("utf-8", "replace")
    return found


def could_be_origin(claimed: str, read_from: str) -> bool:
    """Whether a replayed record read from ``read_from`` can first have been seen on ``claimed``.

    Replays write only into the input topic (replay.target), from where a record keyed by
    something else than its aggregate goes on to the repartition topic. So a genuine claim
    names the topic the record was read from, or, for a record first seen on the repartition
    topic and failing again on the input, the input's repartition topic
    (``<app_id>-<input>-repartition``). The original-place headers travel in the record
    itself, so any producer can forge them: another claimed topic is not believed, and the
    record's own place is recorded instead (what `dlq show` prints stays true).
    """
    return claimed == read_from or claimed.endswith(f"-{read_from}-repartition")


def dlq_headers(
    source: InRecord, failure: Failure, *, worker_id: str, max_message: int, now: float | None = None
) -> list[tuple[str, bytes | None]]:
    """The DLQ headers of the failed input record ``source``. A replayed record keeps its first
    failure time and replay count, and its original place if that place is plausible."""
    now = time.time() if now is None else now
    replays = header(source.headers, REPLAY_COUNT) or "0"
    first = header(source.headers, FIRST_FAILURE) or f"{now:.3f}"
    topic, partition, offset, ts = source.topic, source.partition, source.offset, source.timestamp_ms
    claimed = header(source.headers, ORIGINAL_TOPIC) or topic
    if header(source.headers, REPLAYED_FROM) is not None and could_be_origin(claimed, topic):
        # Keep the first place the record was seen, not the replay's.
        topic = claimed
        # These headers arrive with the input record: never let a malformed one stop the worker.
        raw_partition, raw_offset = header(source.headers, ORIGINAL_PARTITION), header(source.headers, ORIGINAL_OFFSET)
        partition = int(raw_partition) if raw_partition and raw_partition.isdecimal() else partition
        offset = int(raw_offset) if raw_offset and raw_offset.isdecimal() else offset
    ours = {
        ORIGINAL_TOPIC: topic,
        ORIGINAL_PARTITION: str(partition),
        ORIGINAL_OFFSET: str(offset),
        ORIGINAL_TIMESTAMP: "" if ts is None else str(ts),
        AGGREGATE_ID: failure.aggregate_id,
        SEQUENCE: "" if failure.sequence is None else str(failure.sequence),
        EVENT_TYPE: failure.event_type,
        EVENT_ID: failure.event_id,
        ERROR_CLASS: failure.error_class,
        ERROR_MESSAGE: failure.message[:max_message],
        ATTEMPTS: str(failure.attempts),
        FIRST_FAILURE: first,
        LAST_FAILURE: f"{now:.3f}",
        REPLAY_COUNT: replays,
        WORKER_ID: worker_id,
    }
    return original_headers(source.headers) + [(k, v.encode("utf-8", "replace")) for k, v in ours.items()]


@dataclass(slots=True)
class DeadLetter:
    """One DLQ record as read back: its place in the DLQ and everything seqguard recorded."""

    dlq_topic: str
    dlq_partition: int
    dlq_offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    meta: dict[str, str]

    @classmethod
    def from_record(cls, record: Any) -> DeadLetter:
        headers = list(record.headers or ())
        # Anyone can write a DLQ record: a null or non-UTF-8 value must not stop `dlq show` or `replay`.
        meta = {k[len(PREFIX) :]: (v or b"").decode("utf-8", "replace") for k, v in headers if k.startswith(PREFIX)}
        return cls(record.topic, record.partition, record.offset, record.key, record.value, headers, meta)

    @property
    def error_class(self) -> str:
        return self.meta.get("error-class", "")

    @property
    def aggregate_id(self) -> str:
        return self.meta.get("aggregate-id", "")

    @property
    def event_type(self) -> str:
        return self.meta.get("event-type", "")

    @property
    def sequence(self) -> int | None:
        raw = self.meta.get("sequence", "")
        return int(raw) if raw.isdecimal() else None

    @property
    def original_timestamp(self) -> int | None:
        raw = self.meta.get("original-timestamp", "")
        return int(raw) if raw.lstrip("-").isdecimal() else None

    @property
    def original_topic(self) -> str:
        return self.meta.get("original-topic", "")

    @property
    def replay_count(self) -> int:
        raw = self.meta.get("replay-count", "0")
        return int(raw) if raw.isdecimal() else 0

    @property
    def last_failure(self) -> float:
        try:
            return float(self.meta.get("last-failure", "0"))
        except ValueError:
            return 0.0

    @property
    def place(self) -> str:
        return f"{self.dlq_topic}:{self.dlq_partition}:{self.dlq_offset}"

    def replay_headers(self) -> list[tuple[str, bytes | None]]:
        """Original headers plus what a replay carries forward (count, first failure, origin)."""
        carried = {
            REPLAY_COUNT: str(self.replay_count + 1),
            FIRST_FAILURE: self.meta.get("first-failure", ""),
            REPLAYED_FROM: self.place,
            ORIGINAL_TOPIC: self.original_topic,
            ORIGINAL_PARTITION: self.meta.get("original-partition", ""),
            ORIGINAL_OFFSET: self.meta.get("original-offset", ""),
        }
        return original_headers(self.headers) + [(k, v.encode()) for k, v in carried.items()]

    def summary(self) -> dict[str, Any]:
        return {
            "place": self.place,
            "key": None if self.key is None else self.key.decode("utf-8", "replace"),
            **self.meta,
        }
