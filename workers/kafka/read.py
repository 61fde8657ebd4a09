"""Read a topic (or some partitions) to its real end: the one reader of DLQ, demo, probe and tests.

"The end" is never ListOffsets "latest": the embedded broker answers it a record batch short
(docs/embedded-broker.md), so ``end_offsets`` and ``seek_to_end`` are wrong there. A partition
is done when its position reaches the high-water mark a fetch reported, which is exact on
every broker (``at_highwater``), or when nothing new arrived for ``quiet`` seconds: records
still being produced (tests waiting for a worker's output), or a partition that never
answered a fetch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from workers.kafka import clients

POLL_MS = 200


@dataclass
class TopicRead:
    records: list[Any]  # aiokafka ConsumerRecords, in arrival order
    highwaters: dict[TopicPartition, int]  # the last fetch high-water mark of each partition that answered


async def read_to_end(
    bootstrap: clients.Target,
    source: str | Mapping[TopicPartition, int],
    *,
    expect: int | None = None,
    quiet: float = 2.0,
    at_highwater: bool = True,
    max_wait: float | None = None,
    topic_wait: float = 0.0,
    fetch_wait_ms: int = 50,
) -> TopicRead:
    """Every record of ``source``: a topic name (all partitions, from their beginning) or
    start offsets per partition.

    Stops when every partition reached its fetch high-water mark (``at_highwater``), or when
    nothing new arrived for ``quiet`` s; never before ``expect`` records, and always after
    ``max_wait`` s (with the records read so far). ``topic_wait``: how long to wait for a
    topic that does not exist yet.
    """
    consumer = clients.consumer(bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms)
    try:
        await consumer.start()  # in the try: stopped after a failed start too (no "Unclosed AIOKafkaConsumer")
        if isinstance(source, str):
            tps = await _partitions(consumer, source, topic_wait)
            if not tps:
                return TopicRead([], {})
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
        else:
            tps = list(source)
            consumer.assign(tps)
            for tp, offset in source.items():
                consumer.seek(tp, offset)
        records = await _read(consumer, tps, expect, quiet, at_highwater, max_wait)
        highwaters = {tp: hw for tp in tps if (hw := consumer.highwater(tp)) is not None}
        return TopicRead(records, highwaters)
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str, wait: float) -> list[TopicPartition]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    partitions = consumer.partitions_for_topic(topic)
    while not partitions:
        await consumer.topics()  # metadata of all topics: naming one would auto-create it on Tansu
        partitions = consumer.partitions_for_topic(topic)
        if partitions or loop.time() >= deadline:
            break
        await asyncio.sleep(0.1)
    return [TopicPartition(topic, p) for p in sorted(partitions or ())]


async def _read(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    expect: int | None,
    quiet: float,
    at_highwater: bool,
    max_wait: float | None,
) -> list[Any]:
    now = asyncio.get_running_loop().time
    deadline = None if max_wait is None else now() + max_wait
    last_new = now()
    out: list[Any] = []
    pending = set(tps)
    while True:
        batch = await consumer.getmany(timeout_ms=POLL_MS)
        for msgs in batch.values():
            if msgs:
                out.extend(msgs)
                last_new = now()
        if at_highwater:
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
                    consumer.pause(tp)  # read "to the end as of now": nothing appended later
        if deadline is not None and now() >= deadline:
            return out
        if expect is not None and len(out) < expect:
            continue
        if (at_highwater and not pending) or now() - last_new > quiet:
            return out
