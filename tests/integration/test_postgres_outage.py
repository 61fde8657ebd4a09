"""PostgreSQL stopped for 10 s mid-stream under the order domain's projection: the worker
pauses (nothing dead-lettered, nothing parked) and the projection ends complete and exact."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from tests.harness import Deployment, Worker, consume_all, event, metric_value, produce, wait_until
from tests.pg import PrivatePostgres, fresh_database
from workers.kafka.embedded import EmbeddedBroker

ORDERS = 200
LIFECYCLE = ["order.created", "order.paid", "order.reserved", "order.shipped", "order.delivered"]
STATES = ["created", "paid", "reserved", "shipped", "delivered"]


def order(a: int, s: int) -> Any:
    data: dict[str, Any] = {"amount_cents": 1000 + a, "currency": "EUR"} if s == 2 else {}
    return event(f"order-{a}", s, LIFECYCLE[s - 1], data, schemaversion=2 if s == 2 else 1)


@pytest.mark.fault
@pytest.mark.timeout(300)
async def test_postgres_stopped_mid_stream_dead_letters_nothing_and_projects_exactly(
    broker: EmbeddedBroker, redis_url: str, private_postgres: PrivatePostgres
) -> None:
    d = Deployment(broker.url, redis_url, extra={"SEQGUARD_POSTGRES_TIMEOUT": "1"})
    d.postgres_url = await fresh_database(private_postgres.url, d.name)
    await d.create_topics()
    settings = d.settings()
    worker = Worker(d)
    await worker.ready()
    stream = [order(a, s) for s in range(1, 6) for a in random.Random(3).sample(range(ORDERS), ORDERS)]
    third = len(stream) // 3
    await produce(broker.bootstrap, settings.input_topic, stream[:third])
    await wait_until(
        lambda: metric_value(worker.metrics(), "seqguard_events_applied_total") >= 50, timeout=60, what="50 applied"
    )
    private_postgres.stop()
    await produce(broker.bootstrap, settings.input_topic, stream[third : 2 * third])
    paused = await wait_until(lambda: worker.get("/healthz")[1].get("paused"), timeout=9, what="the pause shown")
    assert paused["dependency"] == "postgres", paused
    await asyncio.sleep(10)
    private_postgres.start()
    await produce(broker.bootstrap, settings.input_topic, stream[2 * third :])
    out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(stream), timeout=120)
    assert len(out) == len(stream)
    assert await consume_all(broker.bootstrap, settings.dlq, quiet=2.0) == []
    text = worker.metrics()
    assert metric_value(text, "seqguard_dead_lettered_total") == 0
    assert metric_value(text, "seqguard_parked_aggregates") == 0
    assert metric_value(text, "seqguard_outages_total", dependency="postgres") >= 1
    assert metric_value(text, "seqguard_paused") == 0

    conn = await asyncpg.connect(d.postgres_url)
    try:
        orders = [tuple(r) for r in await conn.fetch("SELECT * FROM seqguard_orders ORDER BY order_id")]
        history = [tuple(r) for r in await conn.fetch("SELECT * FROM seqguard_order_history")]
    finally:
        await conn.close()
    assert orders == sorted((f"order-{a}", "delivered", 1000 + a, "EUR", 5, 5) for a in range(ORDERS))
    expected = sorted((f"order-{a}", s, LIFECYCLE[s - 1], STATES[s - 1]) for a in range(ORDERS) for s in range(1, 6))
    assert sorted(history) == expected, "every event projected once"
    worker.stop()
