"""The ordered output topic, against the real embedded broker and Redis."""

from __future__ import annotations

import random

from tests.harness import (
    Deployment,
    Worker,
    consume_all,
    event,
    metric_value,
    produce,
    sequences_by_aggregate,
    shuffled_within,
    with_duplicates,
)
from workers.effects import Effects

AGGREGATES = 1_000
PER_AGGREGATE = 10


def scenario(rng: random.Random) -> tuple[list, int]:
    """10,000 events over 1,000 aggregates, shuffled within a window, 5% duplicated."""
    in_order = [
        event(f"acct-{a}", s, "account.updated", {"n": s})
        for s in range(1, PER_AGGREGATE + 1)
        for a in range(AGGREGATES)
    ]
    records = with_duplicates(shuffled_within(in_order, 3_000, rng), 0.05, rng)
    return records, len(in_order)


async def test_shuffled_duplicated_events_come_out_in_order_once(deployment: Deployment, broker) -> None:
    rng = random.Random(1)
    records, unique = scenario(rng)
    # The shuffle must really put events out of order, or this test proves nothing.
    sent_order = sequences_by_aggregate_sent(records)
    assert sum(1 for seqs in sent_order.values() if seqs != sorted(seqs)) > AGGREGATES // 2

    worker = Worker(deployment)
    try:
        await worker.ready()
        settings = deployment.settings()
        await produce(broker.bootstrap, settings.input_topic, records)
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=unique, timeout=120)
        metrics = worker.metrics()
    finally:
        worker.stop()

    by_agg = sequences_by_aggregate(out)
    assert len(by_agg) == AGGREGATES
    expected = list(range(1, PER_AGGREGATE + 1))
    wrong = {agg: seqs for agg, seqs in by_agg.items() if seqs != expected}
    assert not wrong, f"{len(wrong)} aggregates out of order or incomplete, e.g. {list(wrong.items())[:3]}"
    assert len(out) == unique
    assert metric_value(metrics, "seqguard_events_duplicate_total") == len(records) - unique
    assert metric_value(metrics, "seqguard_events_out_of_order_total") > 0
    # Every batch's cycle is timed by phase (where a worker's latency goes): the fetch once per
    # fetch (a fetch larger than SEQGUARD_BATCH_MAX is several batches), the rest once per batch.
    batches = metric_value(metrics, "seqguard_batch_duration_seconds_count")
    phases = ("fetch", "process", "effects", "state")
    counts = {p: metric_value(metrics, "seqguard_batch_phase_duration_seconds_count", phase=p) for p in phases}
    assert batches >= 1 and 1 <= counts.pop("fetch") <= batches, (batches, counts)
    assert all(n == batches for n in counts.values()), (batches, counts)
    assert all(metric_value(metrics, "seqguard_batch_phase_duration_seconds_sum", phase=p) > 0 for p in phases)


def sequences_by_aggregate_sent(records: list) -> dict[str, list[int]]:
    import json

    out: dict[str, list[int]] = {}
    for key, _, value in records:
        out.setdefault(key.decode(), []).append(json.loads(value)["sequence"])
    return out


async def test_shipped_before_paid_is_applied_paid_then_shipped(deployment: Deployment, broker, redis_url) -> None:
    """The incident: order.shipped arrived before order.paid."""
    from redis.asyncio import Redis

    order = "order-incident"
    arrival = [
        event(order, 1, "order.created"),
        event(order, 3, "order.shipped"),  # ahead of its turn
        event(order, 2, "order.paid", {"amount_cents": 1250, "currency": "EUR"}, schemaversion=2),
    ]
    worker = Worker(deployment)
    try:
        await worker.ready()
        settings = deployment.settings()
        await produce(broker.bootstrap, settings.input_topic, arrival)
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=3, timeout=30)
    finally:
        worker.stop()
    assert [json_type(r) for r in out] == ["order.created", "order.paid", "order.shipped"]
    redis = Redis.from_url(redis_url)
    try:
        effects = Effects(redis, prefix=settings.redis_prefix)
        assert await effects.history("order", order) == ["1:order.created", "2:order.paid", "3:order.shipped"]
        assert await effects.state("order", order) == "shipped"
        emails = await effects.outbox("emails")
        assert [e["order"] for e in emails] == [order]
    finally:
        await redis.aclose()


def json_type(record) -> str:
    import json

    return json.loads(record.value)["type"]
