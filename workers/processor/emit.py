"""What a batch writes besides state: applied events, dead letters, audit records."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from workers import logs
from workers.dlq.records import Failure, dlq_headers
from workers.kafka.sink import Sink
from workers.metrics import Metrics
from workers.records import InRecord
from workers.settings import Settings


class Emitter:
    def __init__(
        self, settings: Settings, sink: Sink, metrics: Metrics, worker_id: str, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.worker_id = worker_id
        self.clock = clock

    def output(self, rec: InRecord, aggregate_key: bytes, partition: int) -> None:
        """The applied event, on the output topic's partition of its aggregate."""
        self.sink.add(self.settings.output_topic, partition, aggregate_key, rec.value, rec.timestamp_ms, rec.headers)

    async def dead_letter(self, rec: InRecord, failure: Failure) -> None:
        headers = dlq_headers(rec, failure, worker_id=self.worker_id, max_message=self.settings.error_message_max)
        m = self.metrics
        m.dead_lettered.labels(failure.error_class, m.type_label(failure.event_type or "")).inc()
        logs.dead_lettered(rec, failure)
        await self.sink.send_keyed(self.settings.dlq, rec.key, rec.value, rec.timestamp_ms, headers)

    def audit(self, kind: str, key: bytes, **fields: Any) -> None:
        body = {
            "kind": kind,
            "aggregate": key.decode("utf-8", "replace"),
            "at": self.clock(),
            "worker": self.worker_id,
            **fields,
        }
        self.sink.add(self.settings.audit_topic, 0, key, json.dumps(body).encode(), None, ())
