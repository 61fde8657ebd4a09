"""Outages pause, they do not dead-letter: Redis SIGKILLed and restarted (data kept) or hung
(SIGSTOP) for 10 s while 300 orders x 5 events flow. Every event is applied once, in order;
nothing is dead-lettered or parked; each order gets one confirmation email; and the worker
reports the pause (metrics, log lines, /healthz). Under fail_open, the ledger's fail-open
count equals the effects that ran without a ledger entry.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.harness import (
    Deployment,
    Worker,
    consume_all,
    event,
    metric_value,
    produce,
    sequences_by_aggregate,
    wait_until,
)
from tests.integration.ledger_domain import EFFECT, TYPE
from tests.redis_server import PrivateRedis
from workers.domains.orders import EMAIL_OUTBOX
from workers.effects import Effects
from workers.kafka.embedded import EmbeddedBroker
from workers.ledger.redis import Ledger

ORDERS = 300
LIFECYCLE = ["order.created", "order.paid", "order.reserved", "order.shipped", "order.delivered"]
OUTAGE = 10.0


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    r = PrivateRedis()
    yield r
    r.destroy()


def order_stream(rng: random.Random) -> list[Any]:
    def one(a: int, s: int) -> Any:
        data: dict[str, Any] = {"amount_cents": 100 + a, "currency": "EUR"} if s == 2 else {}
        return event(f"order-{a}", s, LIFECYCLE[s - 1], data, schemaversion=2 if s == 2 else 1)

    return [one(a, s) for s in range(1, 6) for a in rng.sample(range(ORDERS), ORDERS)]


async def run_outage(worker: Worker, redis: PrivateRedis, how: str) -> None:
    """Take Redis away for OUTAGE seconds once the worker is mid-stream, and check that the
    worker shows the pause while it lasts."""
    await wait_until(
        lambda: metric_value(worker.metrics(), "seqguard_events_applied_total") >= 100,
        timeout=60,
        what="100 events applied",
    )
    redis.kill() if how == "kill" else redis.freeze()
    loop = asyncio.get_running_loop()
    back = loop.time() + OUTAGE
    paused = await wait_until(
        lambda: worker.get("/healthz")[1].get("paused"), timeout=OUTAGE - 1, what="/healthz shows the pause"
    )
    assert paused["dependency"] == "redis", paused
    await asyncio.sleep(max(0.0, back - loop.time()))
    redis.start() if how == "kill" else redis.thaw()


@pytest.mark.fault
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["kill", "freeze"])
async def test_a_redis_outage_pauses_the_worker_and_dead_letters_nothing(
    broker: EmbeddedBroker, private_redis: PrivateRedis, how: str
) -> None:
    d = Deployment(broker.url, private_redis.url)
    await d.create_topics()
    settings = d.settings()
    stream = order_stream(random.Random(8))
    worker = Worker(d)
    await worker.ready()
    producing = asyncio.create_task(_produce_slowly(broker.bootstrap, settings.input_topic, stream))
    await run_outage(worker, private_redis, how)
    await producing

    out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(stream), timeout=120)
    by_order = sequences_by_aggregate(out)
    assert len(out) == len(stream), f"{len(out)} of {len(stream)} applied\n{worker.tail()}"
    assert all(seqs == [1, 2, 3, 4, 5] for seqs in by_order.values()) and len(by_order) == ORDERS
    assert await consume_all(broker.bootstrap, settings.dlq, quiet=2.0) == []
    text = worker.metrics()
    assert metric_value(text, "seqguard_parked_aggregates") == 0
    assert metric_value(text, "seqguard_dead_lettered_total") == 0
    assert metric_value(text, "seqguard_outages_total", dependency="redis") >= 1
    assert metric_value(text, "seqguard_outage_retries_total", dependency="redis") >= 1
    assert (
        metric_value(text, "seqguard_paused") == 0
        and metric_value(text, "seqguard_dependency_up", dependency="redis") == 1
    )
    log = worker.log_path.read_text()
    assert "PAUSED: redis is unavailable" in log and "RESUMED after" in log

    redis = Redis.from_url(private_redis.url)
    try:
        effects = Effects(redis, prefix=settings.redis_prefix)
        emails = await effects.outbox(EMAIL_OUTBOX)
        histories = [await effects.history("order", f"order-{a}") for a in range(ORDERS)]
    finally:
        await redis.aclose()
    assert sorted(e["order"] for e in emails) == sorted(f"order-{a}" for a in range(ORDERS)), "one email per order"
    expected = [f"{s}:{t}" for s, t in enumerate(LIFECYCLE, 1)]
    assert all(h == expected for h in histories), "every transition once, in order"
    worker.stop()


async def _produce_slowly(bootstrap: str, topic: str, stream: list[Any], chunks: int = 30) -> None:
    """Over ~15 s: part before the outage, part during it, part after."""
    step = len(stream) // chunks + 1
    for i in range(0, len(stream), step):
        await produce(bootstrap, topic, stream[i : i + step])
        await asyncio.sleep(0.5)


@pytest.mark.fault
@pytest.mark.timeout(300)
async def test_fail_open_runs_effects_unguarded_and_counts_each(
    broker: EmbeddedBroker, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    policies = tmp_path / "policies.toml"
    policies.write_text(f'[effects."{EFFECT}"]\noutage = "fail_open"\n')
    d = Deployment(broker.url, private_redis.url)
    d.extra.update(
        SEQGUARD_DOMAINS="tests.integration.ledger_domain",
        SEQGUARD_POLICY_FILE=str(policies),
        SEQGUARD_TEST_SPOOL=str(spool),
    )
    await d.create_topics()
    settings = d.settings()
    stream = [event(f"agg-{a}", s, TYPE) for s in range(1, 6) for a in range(100)]
    worker = Worker(d)
    await worker.ready()
    producing = asyncio.create_task(_produce_slowly(broker.bootstrap, settings.input_topic, stream, chunks=20))
    await wait_until(
        lambda: metric_value(worker.metrics(), "seqguard_events_applied_total") >= 100, timeout=60, what="100 applied"
    )
    private_redis.kill()
    await wait_until(
        lambda: metric_value(worker.metrics(), "seqguard_ledger_fail_open_total") >= 1,
        timeout=30,
        what="a fail-open run",
    )
    await asyncio.sleep(OUTAGE / 2)
    private_redis.start()
    await producing
    out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(stream), timeout=120)
    assert len(out) == len(stream)

    runs = spool.read_text().split()
    assert len(runs) == len(set(runs)) == len(stream), "every effect ran once"
    redis = Redis.from_url(private_redis.url)
    try:
        ledger = Ledger(redis, namespace=settings.ledger_prefix, owner="test", ttl=60, lease=10)
        # An event's idempotency key is "<source>\x1f<id>" (Envelope.idempotency_key); source "test".
        unguarded = [r for r in runs if await ledger.entry(EFFECT, f"test\x1f{r}") is None]
    finally:
        await redis.aclose()
    fail_open = metric_value(worker.metrics(), "seqguard_ledger_fail_open_total", effect=EFFECT)
    print(f"fail-open runs: {fail_open:g}, effects without a ledger entry: {len(unguarded)}")
    assert fail_open == len(unguarded) > 0
    assert "FAIL-OPEN" in worker.log_path.read_text()
    worker.stop()
