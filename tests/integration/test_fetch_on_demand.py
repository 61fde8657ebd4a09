"""Fetch on demand (workers/kafka/fetch_demand.py), on aiokafka's real fetcher and the embedded broker.

A marked fetcher sends a fetch only while a caller waits for records; an unmarked one
(aiokafka's prefetch, SEQGUARD_FETCH_AHEAD=true) fetches again as soon as its records are
taken. The idle second below is what is measured: nobody asks, so nothing may be fetched.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.harness import Deployment
from workers.kafka import fetch_demand

IDLE = 1.0  # seconds nobody asks; an empty fetch is held 100 ms, so prefetch sends several


async def consumer_on(
    bootstrap: str, topic: str, *, on_demand: bool, **options: Any
) -> tuple[AIOKafkaConsumer, list[int]]:
    """A started consumer assigned every partition of ``topic`` from the start, and its fetch count."""
    fetch_demand.install()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=100, **options)
    if on_demand:
        fetch_demand.mark_on_start(consumer)
    await consumer.start()
    await consumer._client.force_metadata_update()
    partitions = consumer._client.cluster.partitions_for_topic(topic)
    assert partitions, f"no partitions for {topic}"
    consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
    await consumer.seek_to_beginning()
    fetches = [0]
    fetcher: Any = consumer._fetcher
    send = fetcher._proc_fetch_request

    async def counted(*args: Any) -> Any:
        fetches[0] += 1
        return await send(*args)

    fetcher._proc_fetch_request = counted
    return consumer, fetches


async def take(consumer: AIOKafkaConsumer, n: int, deadline: float = 30.0, **options: Any) -> list[Any]:
    got: list[Any] = []
    end = time.monotonic() + deadline
    while len(got) < n:
        assert time.monotonic() < end, f"{len(got)} of {n} records within {deadline} s"
        for recs in (await consumer.getmany(timeout_ms=1000, **options)).values():
            got.extend(recs)
    return got


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=value)
    finally:
        await producer.stop()


async def idle_fetches(deployment: Deployment, *, on_demand: bool) -> tuple[int, list[bytes]]:
    """Fetches sent during IDLE seconds nobody asked, with records waiting; and what the next ask got."""
    topic = deployment.settings().input_topic
    bootstrap = deployment.settings().bootstrap_servers
    consumer, fetches = await consumer_on(bootstrap, topic, on_demand=on_demand)
    try:
        await produce(bootstrap, topic, [b"a-%d" % i for i in range(10)])
        await take(consumer, 10)
        before = fetches[0]
        await produce(bootstrap, topic, [b"b-%d" % i for i in range(10)])
        await asyncio.sleep(IDLE)  # nobody asks
        during = fetches[0] - before
        later = await take(consumer, 10)
        assert fetches[0] > before, "the ask fetched"
        return during, sorted(r.value for r in later)
    finally:
        await consumer.stop()


async def test_an_on_demand_consumer_fetches_only_while_asked(deployment: Deployment) -> None:
    during, later = await idle_fetches(deployment, on_demand=True)
    assert during == 0, f"{during} fetches while nobody asked"
    assert later == sorted(b"b-%d" % i for i in range(10)), "the next ask reads what came meanwhile"


async def test_prefetch_fetches_while_nobody_asks(deployment: Deployment) -> None:
    """The contrast: without the mark (SEQGUARD_FETCH_AHEAD=true), aiokafka fetches ahead."""
    during, later = await idle_fetches(deployment, on_demand=False)
    assert during >= 1, "aiokafka's prefetch fetched while nobody asked"
    assert later == sorted(b"b-%d" % i for i in range(10))


async def test_a_waiting_caller_is_answered_after_empty_fetches(deployment: Deployment) -> None:
    """Fetches that find nothing are held and answered empty; the waiting caller asks again
    until records come, not once."""
    topic = deployment.settings().input_topic
    bootstrap = deployment.settings().bootstrap_servers
    consumer, fetches = await consumer_on(bootstrap, topic, on_demand=True)
    try:
        waiting = asyncio.create_task(consumer.getmany(timeout_ms=30_000))
        deadline = time.monotonic() + 30
        while fetches[0] < 3:  # three empty answers at least
            assert time.monotonic() < deadline and not waiting.done(), f"{fetches[0]} fetches"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        await produce(bootstrap, topic, [b"late"])
        got = await asyncio.wait_for(waiting, 30)
        assert [r.value for recs in got.values() for r in recs] == [b"late"]
        assert time.monotonic() - started < 10, "answered by a fetch, not by the caller's timeout"
    finally:
        await consumer.stop()


async def test_a_backlog_is_fetched_ahead_until_caught_up(deployment: Deployment) -> None:
    """Records the last fetch reported but did not return are there already: they are fetched
    without waiting for an ask (nothing stale), and the fetching stops once they are all in."""
    topic = deployment.settings().input_topic
    bootstrap = deployment.settings().bootstrap_servers
    small = {"max_partition_fetch_bytes": 512, "fetch_max_bytes": 512}  # a few records per fetch
    consumer, fetches = await consumer_on(bootstrap, topic, on_demand=True, **small)
    try:
        await produce(bootstrap, topic, [b"backlog-%03d" % i for i in range(100)])
        got = await take(consumer, 1, max_records=1)
        before = fetches[0]
        await asyncio.sleep(IDLE)  # nobody asks, but the broker said there is more
        assert fetches[0] > before, "a backlog is fetched ahead"
        got += await take(consumer, 100 - len(got))
        assert sorted(r.value for r in got) == [b"backlog-%03d" % i for i in range(100)]
        caught_up = fetches[0]
        await asyncio.sleep(IDLE)
        assert fetches[0] == caught_up, f"{fetches[0] - caught_up} fetches after catching up, nobody asking"
    finally:
        await consumer.stop()
