"""Events made by the CloudEvents Python SDK itself, out of order, through a real worker.

Real producers label structured events in several ways: the SDK's 1.x API writes the data's
content type (application/json) into the content-type header, or no header at all; its 2.x
core API writes application/cloudevents+json; binary mode carries ce_* headers. A worker must
apply every one of them in order per aggregate, and dead-letter none
(workers/envelope.py: a JSON object with specversion is structured, whatever its content-type).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.harness import Deployment, Worker, consume_all, metric_value, produce, shuffled_within

AGGREGATES = 60
PER_AGGREGATE = 8

Record = tuple[bytes, list[tuple[str, bytes]], bytes]
Made = tuple[str, int, Record]  # aggregate, sequence, the record the SDK made


def sdk_producers() -> dict[str, Callable[[dict[str, Any], Any], Any]]:
    """One way of making a Kafka message per SDK API and content mode, each returning the SDK's KafkaMessage."""
    try:
        from cloudevents.v1.http import CloudEvent as V1Event
        from cloudevents.v1.kafka import to_binary as v1_binary
        from cloudevents.v1.kafka import to_structured as v1_structured
    except ImportError:  # cloudevents < 2: the same API under its old name
        from cloudevents.http import CloudEvent as V1Event  # type: ignore[no-redef]
        from cloudevents.kafka import to_binary as v1_binary  # type: ignore[no-redef]
        from cloudevents.kafka import to_structured as v1_structured  # type: ignore[no-redef]

    def v1(attrs: dict[str, Any], data: Any, *, content_type: bool) -> V1Event:
        extra = {"datacontenttype": "application/json"} if content_type else {}
        return V1Event({**attrs, **extra}, data)

    producers: dict[str, Callable[[dict[str, Any], Any], Any]] = {
        "v1 structured, content-type application/json": lambda a, d: v1_structured(v1(a, d, content_type=True)),
        "v1 structured, no content-type": lambda a, d: v1_structured(v1(a, d, content_type=False)),
        # the 1.x API writes header values with str.encode: the sequence goes as a string
        "v1 binary": lambda a, d: v1_binary(v1({**a, "sequence": str(a["sequence"])}, d, content_type=True)),
    }
    try:
        from cloudevents.core.bindings import kafka as core
        from cloudevents.core.formats.json import JSONFormat
        from cloudevents.core.v1.event import CloudEvent as CoreEvent
    except ImportError:
        return producers
    fmt = JSONFormat()

    def core_event(attrs: dict[str, Any], data: Any) -> CoreEvent:
        return CoreEvent(attributes={**attrs, "datacontenttype": "application/json"}, data=data)

    producers["core structured"] = lambda a, d: core.to_structured(core_event(a, d), fmt)
    producers["core binary"] = lambda a, d: core.to_binary(core_event(a, d), fmt)
    return producers


def sdk_records(rng: random.Random) -> tuple[list[Made], Counter[str]]:
    """Every event of every aggregate, each made by a randomly chosen SDK producer, in sequence order."""
    producers = sdk_producers()
    names = sorted(producers)
    records, made = [], Counter[str]()
    for seq in range(1, PER_AGGREGATE + 1):
        for a in range(AGGREGATES):
            aggregate = f"acct-{a:03d}"
            name = rng.choice(names)
            attrs = {"type": "account.updated", "source": "sdk/test", "id": f"{aggregate}-{seq}"}
            message = producers[name]({**attrs, "partitionkey": aggregate, "sequence": seq}, {"n": seq})
            key = message.key.encode() if isinstance(message.key, str) else message.key
            records.append((aggregate, seq, (key, list(message.headers.items()), message.value)))
            made[name] += 1
    return records, made


def sequences(records: list[Any], made: list[Made]) -> dict[str, list[int]]:
    """Per aggregate, the sequence numbers of output records in the order they stand in their
    partition. An applied record is the input record unchanged: found by its bytes, not decoded."""
    which = {(rec[2], tuple(rec[1])): (aggregate, seq) for aggregate, seq, rec in made}
    out: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        aggregate, seq = which[(r.value, tuple(r.headers))]
        out.setdefault(aggregate, []).append(seq)
    return out


async def test_sdk_made_events_out_of_order_are_applied_in_order_and_none_dead_lettered(
    deployment: Deployment, broker
) -> None:
    rng = random.Random(11)
    in_order, made = sdk_records(rng)
    assert made["v1 structured, content-type application/json"] > 0 and made["v1 binary"] > 0
    assert any(rec[1] == [("content-type", b"application/json")] for _, _, rec in in_order)  # once dead-lettered
    arrival = shuffled_within(in_order, 3 * AGGREGATES, rng)
    sent: dict[str, list[int]] = {}
    for aggregate, seq, _ in arrival:
        sent.setdefault(aggregate, []).append(seq)
    assert sum(1 for seqs in sent.values() if seqs != sorted(seqs)) > AGGREGATES // 2, "the shuffle must reorder"

    settings = deployment.settings()
    worker = Worker(deployment)
    try:
        await worker.ready()
        await produce(broker.bootstrap, settings.input_topic, [rec for _, _, rec in arrival])
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(in_order), timeout=120)
        metrics = worker.metrics()
        dead = await consume_all(broker.bootstrap, settings.dlq, quiet=1.0, timeout=10)
    finally:
        worker.stop()

    assert dead == [], Counter(dict(r.headers).get("seqguard-error-message", b"").decode() for r in dead)
    assert metric_value(metrics, "seqguard_dead_lettered_total") == 0
    applied = sequences(out, in_order)
    wrong = {agg: seqs for agg, seqs in applied.items() if seqs != list(range(1, PER_AGGREGATE + 1))}
    assert len(applied) == AGGREGATES and not wrong, f"out of order or incomplete: {list(wrong.items())[:3]}"
    assert len(out) == len(in_order)
    assert metric_value(metrics, "seqguard_events_out_of_order_total") > 0
