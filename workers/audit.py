"""Reading the audit topic back: the last N records, or all since a time, ordered by time.

The worker writes gap and operator records there (``Emitter.audit``), a DLQ replay writes one
``replayed`` record per republished record (``workers/dlq/replay.py``), and only
``seqguard audit`` and the operator page read them. Anyone who may write the topic can write
anything into it, so decoding never fails: an unreadable record is shown as ``malformed``.

Reading the tail: ListOffsets only says where to *start* (it is a record batch short on the
embedded broker, so it is never taken as the end); each partition is read to its fetch
high-water mark (``workers.kafka.read.read_to_end``). The window grows fourfold until it holds
what was asked for, so a query reads at most a few times the records it needs.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from tables.times import parse_since as since
from workers.kafka import clients
from workers.kafka.read import read_to_end

MALFORMED = "malformed"
#: How much of a malformed record's value is kept to show.
PREVIEW = 120


class AuditUnavailable(Exception):
    """The audit topic cannot be read now (Kafka unreachable, too slow): one line for people."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    partition: int
    offset: int
    time: float  # when it was written: the record's timestamp (s), else the body's ``at``
    kind: str
    aggregate: str
    body: dict[str, Any] = field(default_factory=dict)  # the record as written; empty if malformed
    problem: str | None = None  # why it is malformed

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "iso": iso(self.time),
            "partition": self.partition,
            "offset": self.offset,
            "kind": self.kind,
            "aggregate": self.aggregate,
            "record": self.body if self.problem is None else None,
            "malformed": self.problem,
        }


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def decode(partition: int, offset: int, timestamp_ms: int | None, key: bytes | None, value: bytes | None) -> AuditEntry:
    """One audit record, whatever it holds: a record that is no JSON object with a string
    ``kind`` is ``malformed``, with the reason and a preview of its bytes."""
    stamp = timestamp_ms / 1000.0 if isinstance(timestamp_ms, int) and timestamp_ms >= 0 else None
    key_text = _text(key)
    problem: str | None = None
    body: Any = None
    if value is None:
        problem = "null value"
    else:
        try:
            body = json.loads(value)
        except (UnicodeDecodeError, ValueError) as exc:
            problem = f"not JSON ({type(exc).__name__}): {value[:PREVIEW]!r}"
        else:
            if not isinstance(body, dict):
                problem = f"not a JSON object: {value[:PREVIEW]!r}"
            elif not isinstance(body.get("kind"), str) or not body["kind"]:
                problem = f"no kind: {value[:PREVIEW]!r}"
    if problem is not None:
        return AuditEntry(partition, offset, stamp or 0.0, MALFORMED, key_text, {}, problem)
    at = _number(body.get("at"))
    aggregate = body.get("aggregate")
    return AuditEntry(
        partition,
        offset,
        stamp if stamp is not None else (at or 0.0),
        body["kind"],
        aggregate if isinstance(aggregate, str) else key_text,
        body,
    )


def decode_record(record: Any) -> AuditEntry:
    """An aiokafka ConsumerRecord of the audit topic."""
    return decode(record.partition, record.offset, record.timestamp, record.key, record.value)


@dataclass(frozen=True)
class Query:
    kinds: frozenset[str] = frozenset()
    aggregate: str | None = None
    since: float | None = None  # epoch seconds
    limit: int | None = None  # the last N (None: all)

    def match(self, entry: AuditEntry) -> bool:
        if self.kinds and entry.kind not in self.kinds:
            return False
        if self.aggregate is not None and entry.aggregate != self.aggregate:
            return False
        return self.since is None or entry.time >= self.since

    def select(self, ordered: Iterable[AuditEntry]) -> list[AuditEntry]:
        chosen = [e for e in ordered if self.match(e)]
        return chosen[-self.limit :] if self.limit is not None and self.limit > 0 else chosen


def by_time(partitions: Iterable[Sequence[AuditEntry]]) -> list[AuditEntry]:
    """Merge partitions by time; each partition keeps its append order (offsets), whatever
    the producers' clocks said."""
    return list(heapq.merge(*(sorted(p, key=lambda e: e.offset) for p in partitions), key=lambda e: e.time))


def enough(query: Query, read: dict[TopicPartition, list[AuditEntry]], complete: set[TopicPartition]) -> bool:
    """Whether the records read answer ``query``: each partition was read from its beginning,
    or its window reaches back past what is asked (``since``, or the oldest of the last
    ``limit`` matches), so what is left unread is older than anything the answer holds."""
    partial = [tp for tp in read if tp not in complete and read[tp]]
    if not partial:
        return True  # (a partition whose window came back empty holds nothing newer either)
    cutoffs = [] if query.since is None else [query.since]
    if query.limit:
        chosen = query.select(by_time(read.values()))
        if len(chosen) >= query.limit:
            cutoffs.append(chosen[0].time)
    return bool(cutoffs) and all(min(e.time for e in read[tp]) < max(cutoffs) for tp in partial)


async def _bounds(bootstrap: clients.Kafka, topic: str, request_s: float) -> dict[TopicPartition, tuple[int, int]]:
    """Each partition's first offset and (a hint of) its end; {} if the topic does not exist."""
    consumer = clients.consumer(
        bootstrap,
        group_id=None,
        enable_auto_commit=False,
        request_timeout_ms=int(request_s * 1000),
    )
    try:
        await consumer.start()
        await consumer.topics()  # all topics' metadata: naming one would auto-create it on Tansu
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        return {tp: (begins[tp], max(begins[tp], ends[tp])) for tp in tps}
    finally:
        await consumer.stop()  # also after a failed start: no unclosed-consumer warning


async def _read(bootstrap: clients.Kafka, topic: str, query: Query, window: int, max_wait: float) -> list[AuditEntry]:
    bounds = await _bounds(bootstrap, topic, max_wait)
    if not bounds:
        return []
    while True:
        starts = {tp: max(first, end - window) for tp, (first, end) in bounds.items()}
        got = await read_to_end(bootstrap, starts, quiet=min(5.0, max_wait), max_wait=max_wait, fetch_wait_ms=100)
        read: dict[TopicPartition, list[AuditEntry]] = {tp: [] for tp in bounds}
        for record in got.records:
            read[TopicPartition(record.topic, record.partition)].append(decode_record(record))
        complete = {tp for tp, start in starts.items() if start <= bounds[tp][0]}
        if enough(query, read, complete):
            return query.select(by_time(read.values()))
        window *= 4


async def read_audit(
    bootstrap: clients.Kafka, topic: str, query: Query, *, max_wait: float = 30.0, window: int | None = None
) -> list[AuditEntry]:
    """The audit records ``query`` asks for, oldest first. Raises AuditUnavailable when Kafka
    cannot be reached or the reading takes longer than ``max_wait`` seconds."""
    first = window or max(200, 2 * (query.limit or 0))
    try:
        return await asyncio.wait_for(_read(bootstrap, topic, query, first, max_wait), max_wait)
    except TimeoutError as exc:
        raise AuditUnavailable(f"reading {topic} from Kafka at {bootstrap} took longer than {max_wait:g} s") from exc
    except (KafkaConnectionError, OSError) as exc:  # aiokafka's own message lists socket tuples
        raise AuditUnavailable(f"cannot reach Kafka at {bootstrap} (to read {topic})") from exc
    except KafkaError as exc:
        raise AuditUnavailable(f"cannot read {topic} from Kafka at {bootstrap}: {exc}") from exc


# --------------------------------------------------------------------------- for people


def parse_since(text: str, now: float | None = None) -> float:
    """``15m``, ``2h``, ``1d``, ``30s`` ago; an ISO time (local unless it names a zone); or epoch seconds."""
    return since(text, time.time() if now is None else now)


def iso(epoch: float | None) -> str:
    return "-" if not epoch else datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


def printable(text: str) -> str:
    """No control characters reach a terminal (an aggregate ID is input: it could move the
    cursor or forge a line): they are shown as escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _value(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value and '"' not in value:
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def details(entry: AuditEntry) -> str:
    """The record's fields besides kind, aggregate and time, as ``name=value`` (the worker last)."""
    if entry.problem is not None:
        return f"at {entry.partition}:{entry.offset}: {entry.problem}"
    fields = {k: v for k, v in entry.body.items() if k not in ("kind", "aggregate", "at", "worker")}
    if "worker" in entry.body:
        fields["worker"] = entry.body["worker"]
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


def line(entry: AuditEntry) -> str:
    """One readable line per record, safe to print."""
    return printable(f"{iso(entry.time)}  {entry.kind:<15} {entry.aggregate or '-'}  {details(entry)}")
