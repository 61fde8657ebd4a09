"""Replay: pick DLQ records, order them, republish them to their ordered input topic.

Order is the runbook's: group by aggregate, then sequence, then original timestamp.
Each record goes back to the input topic (``target``: never another topic, whatever its
headers claim) with its original key, value, timestamp and partition, its
producer's headers, and replay headers (count, first failure, where it came from). The
ordered core does the rest: a replay of an applied event is a duplicate (no-op), and a
parked aggregate drains in order once its missing event is applied.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from workers.dlq.reader import read_dead_letters, write_markers
from workers.dlq.records import DeadLetter
from workers.kafka import clients
from workers.settings import Settings


@dataclass(frozen=True)
class Filters:
    aggregate: str | None = None
    event_type: str | None = None
    error_classes: frozenset[str] = frozenset()
    since: float | None = None  # last failure time, epoch seconds
    until: float | None = None

    def match(self, letter: DeadLetter) -> bool:
        if self.aggregate is not None and letter.aggregate_id != self.aggregate:
            return False
        if self.event_type is not None and letter.event_type != self.event_type:
            return False
        if self.error_classes and letter.error_class not in self.error_classes:
            return False
        if self.since is not None and letter.last_failure < self.since:
            return False
        return not (self.until is not None and letter.last_failure > self.until)


@dataclass
class Plan:
    replay: list[DeadLetter] = field(default_factory=list)
    already_replayed: int = 0
    over_limit: list[DeadLetter] = field(default_factory=list)  # left for an operator
    not_matching: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "to_replay": len(self.replay),
            "aggregates": len({r.aggregate_id for r in self.replay}),
            "by_error_class": dict(Counter(r.error_class for r in self.replay)),
            "already_replayed": self.already_replayed,
            "over_replay_limit": len(self.over_limit),
            "not_matching_filters": self.not_matching,
        }


def sort_key(letter: DeadLetter) -> tuple[str, int, int, str]:
    seq = letter.sequence if letter.sequence is not None else 2**63
    ts = letter.original_timestamp if letter.original_timestamp is not None else 2**63
    return (letter.aggregate_id, seq, ts, letter.place)


def make_plan(letters: list[DeadLetter], replayed: Container[str], filters: Filters, max_replays: int) -> Plan:
    plan = Plan()
    for letter in letters:
        if letter.place in replayed:
            plan.already_replayed += 1
        elif not filters.match(letter):
            plan.not_matching += 1
        elif letter.replay_count >= max_replays:
            plan.over_limit.append(letter)
        else:
            plan.replay.append(letter)
    plan.replay.sort(key=sort_key)
    return plan


def target(letter: DeadLetter, settings: Settings) -> tuple[str, int | None]:
    """Where a record goes back: always the input topic, never what its headers name.

    The ``original-*`` headers are claims: a replayed record carries them in its own headers,
    so any producer of the input topic can forge them. Only a record first read from the input
    topic itself, with a partition the input topic has, goes back to that partition (its
    producer's partitioner chose it). Every other record (repartition topic, control topic, no
    origin, or one naming the output topic, the DLQ or a changelog) goes to the input topic,
    routed by its key. A replay therefore never writes an operator command (the control topic
    is for operators only; a control record replayed into the input is dead-lettered again as
    forged_control) nor anything the worker does not consume.
    """
    if letter.original_topic == settings.input_topic:
        raw = letter.meta.get("original-partition", "")
        if raw.isdecimal() and int(raw) < settings.partitions:
            return settings.input_topic, int(raw)
    return settings.input_topic, None


async def load_plan(settings: Settings, filters: Filters) -> Plan:
    letters, replayed = await read_dead_letters(settings)
    return make_plan(letters, replayed, filters, settings.max_replays)


#: ``by`` of an operator's ``seqguard dlq replay``: its audit records name SEQGUARD_OPERATOR.
BY_OPERATOR = "seqguard dlq replay"


def audit_record(letter: DeadLetter, by: str, operator: str | None, at: float) -> tuple[bytes, bytes]:
    """The audit topic's key and value for one republished record (kind ``replayed``)."""
    aggregate = letter.aggregate_id or ("" if letter.key is None else letter.key.decode("utf-8", "replace"))
    body = {
        "kind": "replayed",
        "aggregate": aggregate,
        "at": at,
        "seq": letter.sequence,
        "type": letter.event_type,
        "error_class": letter.error_class,
        "event_id": letter.meta.get("event-id", ""),
        "dlq": letter.place,
        "replay_count": letter.replay_count + 1,
        "by": by,
        **({"operator": operator[:200]} if operator else {}),
    }
    return aggregate.encode(), json.dumps(body).encode()


def operator_of(settings: Settings, by: str, operator: str | None) -> str | None:
    """Who replays: ``operator`` if given, else SEQGUARD_OPERATOR for an operator's command (not the agent)."""
    if operator is None and by == BY_OPERATOR:
        return settings.operator.strip() or None
    return operator


async def write_audit(
    producer: AIOKafkaProducer, topic: str, letters: Iterable[DeadLetter], by: str, operator: str | None
) -> None:
    """One ``replayed`` audit record per republished record, in partition 0 like the worker's
    (one partition: the audit's order is the order things happened in)."""
    now = time.time()
    futures = []
    for letter in letters:
        key, value = audit_record(letter, by, operator, now)
        futures.append(await producer.send(topic, value, key=key, partition=0))
    await producer.flush()
    for fut in futures:
        await fut


class _Pace:
    """The rate limit over a whole replay: sleep whenever the records sent run ahead of it."""

    def __init__(self, rate: float) -> None:
        self.rate, self.sent, self.started = rate, 0, time.monotonic()

    def ahead(self) -> float:
        """Seconds to wait after one more record (0: none)."""
        self.sent += 1
        return max(0.0, self.sent / self.rate - (time.monotonic() - self.started)) if self.rate else 0.0


async def _republish(producer: AIOKafkaProducer, part: list[DeadLetter], settings: Settings, pace: _Pace) -> None:
    """Send ``part`` in order and wait until the broker acknowledged all of it."""
    futures: list[Any] = []
    builders: dict[tuple[str, int], Any] = {}

    async def send_batches() -> None:
        for (topic, partition), builder in builders.items():
            futures.append(await producer.send_batch(builder, topic, partition=partition))
        builders.clear()

    for letter in part:
        topic, partition = target(letter, settings)
        if partition is None:  # routed again by key: let the producer's partitioner choose
            futures.append(await producer.send(topic, letter.value, key=letter.key, headers=letter.replay_headers()))
        else:
            builder = builders.get((topic, partition)) or producer.create_batch()
            args = {"timestamp": letter.original_timestamp, "key": letter.key, "value": letter.value}
            if builder.append(**args, headers=letter.replay_headers()) is None:  # full: send it
                futures.append(await producer.send_batch(builder, topic, partition=partition))
                builder = producer.create_batch()
                builder.append(**args, headers=letter.replay_headers())
            builders[(topic, partition)] = builder
        wait = pace.ahead()
        if wait > 0:
            await send_batches()
            await asyncio.sleep(wait)
    await send_batches()
    await producer.flush()
    for fut in futures:
        await fut


async def execute(
    settings: Settings,
    plan: Plan,
    *,
    rate: float | None = None,
    by: str = BY_OPERATOR,
    chunk: int = 5_000,
    operator: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_chunk: Callable[[list[DeadLetter]], None] | None = None,
) -> int:
    """Republish the plan in order, a chunk at a time; audit each acknowledged chunk, then mark
    it replayed. Returns how many records were republished, audited and marked.

    Records are appended to one batch per target partition (aiokafka keeps one batch in
    flight per partition, so each partition's order is the plan's order). The audit names
    ``operator``, else SEQGUARD_OPERATOR for an operator's replay (``by`` BY_OPERATOR). It goes
    before the markers: a crash between them re-replays (duplicates), never leaves a replay unaudited.

    ``should_stop`` is asked before each chunk (the DLQ agent's SIGTERM): a chunk is started only
    to be finished, so a stop leaves every chunk either republished, audited and marked, or not
    sent at all. Only a crash inside a chunk leaves it sent but unmarked: it is replayed again,
    and the worker takes the second copy as a duplicate (seen event IDs, then the sequence; the
    effect ledger for effects). ``on_chunk`` is told of each chunk once it is marked.
    """
    operator = operator_of(settings, by, operator)
    pace = _Pace(settings.replay_rate if rate is None else rate)
    producer = clients.producer(settings, acks="all")
    done = 0
    try:
        await producer.start()  # in the try: stopped after a failed start too (no "Unclosed AIOKafkaProducer")
        for i in range(0, len(plan.replay), chunk):
            if should_stop is not None and should_stop():
                break
            part = plan.replay[i : i + chunk]
            await _republish(producer, part, settings, pace)
            await write_audit(producer, settings.audit_topic, part, by, operator)
            await write_markers(producer, settings.markers_topic, part, by)
            done += len(part)
            if on_chunk is not None:
                on_chunk(part)
    finally:
        await producer.stop()
    return done
