"""An input record as read from Kafka, and its JSON form for the reorder buffer.

The one input-record type: the processor, the handlers and the DLQ headers all take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class InRecord:
    topic: str
    partition: int
    offset: int
    timestamp: float | None  # seconds (CreateTime)
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)  # aiokafka gives None for null values

    @property
    def timestamp_ms(self) -> int | None:
        # round, not int: ms / 1000 * 1000 may come back a hair under the integer it was.
        return None if self.timestamp is None else round(self.timestamp * 1000)

    def to_json(self) -> list[Any]:
        # Only decodable events are buffered, so the value is UTF-8 text; keys and
        # header values may be any bytes: latin-1 maps each byte to one character.
        return [
            self.topic,
            self.partition,
            self.offset,
            self.timestamp,
            None if self.key is None else self.key.decode("latin-1"),
            None if self.value is None else self.value.decode("utf-8"),
            [[k, None if v is None else v.decode("latin-1")] for k, v in self.headers],  # values are nullable
        ]

    @classmethod
    def from_json(cls, data: list[Any]) -> InRecord:
        topic, partition, offset, ts, key, value, headers = data
        return cls(
            topic,
            partition,
            offset,
            ts,
            None if key is None else key.encode("latin-1"),
            None if value is None else value.encode("utf-8"),
            [(k, None if v is None else v.encode("latin-1")) for k, v in headers],
        )
