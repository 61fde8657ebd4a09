"""Bad input gets a clear error class in the DLQ, the worker keeps running, nothing vanishes."""

from __future__ import annotations

import asyncio
import json
import random
import time

from aiokafka import AIOKafkaProducer

from tests.harness import (
    Deployment,
    Worker,
    consume_all,
    event,
    metric_value,
    produce,
    shuffled_within,
    with_duplicates,
)
from workers.envelope import encode_binary, encode_structured

DOMAINS = "workers.domains.orders,tests.integration.flaky_builds"
CE = [("content-type", b"application/cloudevents+json")]
ENV = {
    "SEQGUARD_DOMAINS": DOMAINS,
    "SEQGUARD_DERIVE_MISSING_IDS": "false",
    "SEQGUARD_MAX_BUFFERED_PER_AGGREGATE": "5",
    "SEQGUARD_MAX_EVENT_BYTES": "10000",
    "SEQGUARD_MAX_STATE_RECORD_BYTES": "10000",
    "SEQGUARD_RETRY_BASE_DELAY": "0.01",
}


def structured(body: dict) -> bytes:
    return json.dumps({"specversion": "1.0", **body}).encode()


def bad_records() -> list[tuple[str, bytes | None, list, bytes | None]]:
    """(expected error class, key, headers, value): one of each kind of bad input."""
    ok = {"id": "x", "source": "t", "type": "note"}
    slow_h, slow_v = encode_structured({"id": "s1", "source": "t", "type": "test.slow", "sequence": 1})
    bin_h, bin_v = encode_binary({"id": "b1", "source": "t", "type": "note", "sequence": 1, "data": {}})
    bin_h = [(k, b"\xff\xfe" if k == "ce_type" else v) for k, v in bin_h]
    return [
        ("deserialization_failed", b"a-utf8", CE, b'{"specversion": "1.0", "id": "\xff\xfe"}'),
        ("deserialization_failed", b"a-json", CE, b"{not json"),
        ("deserialization_failed", b"a-array", CE, b"[1, 2]"),
        ("deserialization_failed", b"a-not-ce", CE, json.dumps({"hello": "world"}).encode()),
        ("deserialization_failed", b"a-no-id", CE, structured({"source": "t", "type": "note", "sequence": 1})),
        ("deserialization_failed", b"a-no-type", CE, structured({"id": "1", "source": "t", "sequence": 1})),
        ("deserialization_failed", None, CE, structured({**ok, "sequence": 1})),
        ("deserialization_failed", b"a-seq-text", CE, structured({**ok, "sequence": "abc"})),
        ("deserialization_failed", b"a-seq-float", CE, structured({**ok, "sequence": 1.5})),
        ("deserialization_failed", b"a-seq-zero", CE, structured({**ok, "sequence": 0})),
        ("deserialization_failed", b"a-seq-huge", CE, structured({**ok, "sequence": 2**60})),
        ("deserialization_failed", b"a-binary-header", bin_h, bin_v),
        ("deserialization_failed", b"a-too-big", CE, structured({**ok, "sequence": 1, "data": {"pad": "x" * 20_000}})),
        ("deserialization_failed", b"a-empty", [], None),
        ("deserialization_failed", b"a-long-id", CE, structured({**ok, "id": "i" * 600, "sequence": 1})),
        (
            "schema_invalid",
            b"o-bad-data",
            CE,
            structured(
                {
                    "id": "p",
                    "source": "t",
                    "type": "order.paid",
                    "sequence": 1,
                    "schemaversion": 2,
                    "data": {"amount_cents": "lots"},
                }
            ),
        ),
        (
            "schema_invalid",
            b"o-v9",
            CE,
            structured({"id": "p", "source": "t", "type": "order.paid", "sequence": 1, "schemaversion": 9, "data": {}}),
        ),
        (
            "handler_exception",
            b"o-shipped-first",
            CE,
            structured({"id": "s", "source": "t", "type": "order.shipped", "sequence": 1}),
        ),
        ("timeout_exceeded", b"s1", slow_h, slow_v),
    ]


async def send_each(bootstrap: str, topic: str, records: list) -> list[tuple[int, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        places = []
        for key, headers, value in records:
            meta = await producer.send_and_wait(topic, value, key=key, headers=headers)
            places.append((meta.partition, meta.offset))
        return places
    finally:
        await producer.stop()


def dlq_class_by_place(records: list) -> dict[tuple[int, int], str]:
    out = {}
    for r in records:
        h = {k: v.decode("latin-1") for k, v in r.headers}
        out[(int(h["seqguard-original-partition"]), int(h["seqguard-original-offset"]))] = h["seqguard-error-class"]
    return out


async def test_every_kind_of_bad_input_is_dead_lettered_with_its_class(broker, redis_url) -> None:
    deployment = Deployment(broker.url, redis_url, extra=ENV)
    await deployment.create_topics()
    settings = deployment.settings()
    bad = bad_records()
    late = [event("late", 1, "note"), event("late", 2, "note"), event("late", 1, "note", id="late-other")]
    overflow = [event("full", s, "note") for s in range(2, 9)]  # 1 never comes: 5 buffered, 2 overflow
    # 4 kB events: one fits in the reorder buffer's share (3/4) of a 10 kB state record, the next four
    # overflow by size (counted in encoded bytes: the seen IDs share the record).
    too_big = [event("big", s, "note", {"pad": "x" * 4000}) for s in range(2, 7)]
    worker = Worker(deployment)
    try:
        await worker.ready()
        places = await send_each(
            broker.bootstrap, settings.input_topic, [r[1:] for r in bad] + late + overflow + too_big
        )
        expected = {place: cls for place, (cls, *_) in zip(places, bad, strict=False)}
        expected[places[len(bad) + 2]] = "order_violation"
        start = len(bad) + len(late)
        for place in places[start + 5 : start + len(overflow)] + places[start + len(overflow) + 1 :]:
            expected[place] = "buffer_overflow"
        dlq = await consume_all(broker.bootstrap, settings.dlq, expect=len(expected), timeout=60)
        got = dlq_class_by_place(dlq)
        assert got == expected
        assert worker.proc.poll() is None, "the worker must survive bad input"
        h = {k: v.decode() for k, v in dlq[0].headers}
        for name in (
            "original-topic",
            "original-timestamp",
            "error-message",
            "attempts",
            "first-failure",
            "last-failure",
            "replay-count",
            "worker-id",
        ):
            assert f"seqguard-{name}" in h
        timeout_rec = next(r for r in dlq if r.key == b"s1")
        th = {k: v.decode() for k, v in timeout_rec.headers}
        assert th["seqguard-attempts"] == "3" and "0.2 s" in th["seqguard-error-message"]
        # Original key, value and producer headers are kept untouched.
        utf8 = next(r for r in dlq if r.key == b"a-utf8")
        assert utf8.value == bad[0][3] and ("content-type", CE[0][1]) in list(utf8.headers)
    finally:
        worker.stop()


def mixed_stream(rng: random.Random, total: int = 10_000) -> tuple[list, int]:
    """Good events of 800 aggregates (shuffled, 5% duplicated, some with a missing
    sequence number so events stay buffered), with bad records mixed in: ``total`` in all."""
    good = [event(f"m-{a}", s, "note", {"s": s}) for s in range(1, 11) for a in range(800)]
    missing = {f"m-{a}" for a in range(0, 800, 40)}  # 20 aggregates never get sequence 5
    good = [g for g in good if not (g[0].decode() in missing and json.loads(g[2])["sequence"] == 5)]
    stream = with_duplicates(shuffled_within(good, 1_000, rng), 0.05, rng)
    kinds = [r[1:] for r in bad_records() if r[1] not in (b"s1",)]  # keep the run fast: no 0.6 s timeouts
    while len(stream) < total:
        stream.insert(rng.randrange(len(stream)), rng.choice(kinds))
    return stream[:total], len(good)


async def test_ten_thousand_mixed_records_all_accounted_for(broker, redis_url) -> None:
    """received = applied + duplicate-skipped + dead-lettered + buffered, from topics and tables."""
    deployment = Deployment(broker.url, redis_url, extra={**ENV, "SEQGUARD_MAX_BUFFERED_PER_AGGREGATE": "1000"})
    await deployment.create_topics()
    settings = deployment.settings()
    stream, _ = mixed_stream(random.Random(3))
    worker = Worker(deployment)
    try:
        await worker.ready()
        places = await produce(broker.bootstrap, settings.input_topic, stream)
        assert places == len(stream) == 10_000
        deadline = time.monotonic() + 120
        while metric_value(worker.metrics(), "seqguard_events_received_total") < len(stream):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.5)
        metrics = worker.metrics()
        applied = await consume_all(broker.bootstrap, settings.output_topic, quiet=2)
        dead = await consume_all(broker.bootstrap, settings.dlq, quiet=2)
        buffered = sum(len(v["buffer"]) for v in worker.state().values())
        duplicates = metric_value(metrics, "seqguard_events_duplicate_total")
        assert worker.proc.poll() is None
    finally:
        worker.stop()
    print(
        f"\nreceived {len(stream)} = applied {len(applied)} + duplicates {duplicates:.0f} + dead-lettered {len(dead)} + buffered {buffered}"
    )
    assert len(applied) + duplicates + len(dead) + buffered == len(stream)
    assert len(dead) > 500 and buffered > 0 and duplicates > 0
    assert metric_value(metrics, "seqguard_events_applied_total") == len(applied)
    assert metric_value(metrics, "seqguard_dead_lettered_total") == len(dead)
