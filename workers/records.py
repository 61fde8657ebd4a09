"""An input record as read from Kafka, and its raw form for the reorder buffer (tables.reorder.RawRecord).

The one input-record type: the processor, the handlers and the DLQ headers all take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tables.reorder import RawRecord


@dataclass(slots=True)
class InRecord:
    topic: str
    partition: int
    offset: int
    timestamp: float | None  # seconds (CreateTime)
    key: bytes | None
    value: bytes | None
    #: aiokafka gives None for null values. A key that is not UTF-8 on the wire comes with
    #: surrogate escapes (workers/kafka/patches.py): ``wire_key_text`` makes it writable.
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)

    @classmethod
    def of(cls, topic: str, partition: int, record: Any) -> InRecord:
        """From aiokafka's record (a ConsumerRecord, or the reader's record inside the fetcher)."""
        ts = record.timestamp
        headers = record.headers
        return cls(
            topic,
            partition,
            record.offset,
            None if ts is None else ts / 1000.0,
            record.key,
            record.value,
            list(headers) if headers else [],
        )

    @property
    def timestamp_ms(self) -> int | None:
        # round, not int: ms / 1000 * 1000 may come back a hair under the integer it was.
        return None if self.timestamp is None else round(self.timestamp * 1000)

    def raw(self) -> RawRecord:
        """The record as a reorder buffer keeps it in the state record, verbatim."""
        return (self.topic, self.partition, self.offset, self.timestamp, self.key, self.value, self.headers)


def wire_key_text(key: str) -> str:
    """A header key as UTF-8 text a producer can write: each byte of a key that was not UTF-8
    on the wire (read with surrogateescape) becomes a ``\\xNN`` escape; other keys are unchanged."""
    if key.isascii():
        return key
    try:
        raw = key.encode("utf-8", "surrogateescape")  # the bytes the key was read from
    except UnicodeEncodeError:  # a lone surrogate that no wire bytes give: only built in-process
        return key.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")
