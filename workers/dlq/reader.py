"""Reading the DLQ to its current end, and the durable "already replayed" markers.

"The end" is the fetch high-water mark of each partition (ListOffsets "latest" is wrong
on the embedded broker, EMBEDDED-BROKER.md trap 2; on Kafka both agree). Markers live
in a compacted topic ``<dlq>.replayed`` keyed by the DLQ record's place, written only
after the republished record was acknowledged: a second `replay` skips what the first
one republished, whatever filters either used.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from workers.dlq.records import DeadLetter


def markers_topic(dlq_topic: str) -> str:
    return f"{dlq_topic}.replayed"


async def read_to_end(bootstrap: str, topic: str, *, idle_timeout: float = 5.0) -> list[Any]:
    """Every record of ``topic`` up to each partition's high-water mark at the time of reading."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_poll_records=5000,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            await consumer.topics()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        pending = set(tps)
        last_data = time.monotonic()
        while pending:
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                out.extend(msgs)
                last_data = time.monotonic()
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is not None and await consumer.position(tp) >= highwater:
                    pending.discard(tp)
            if pending and time.monotonic() - last_data > idle_timeout:
                break  # a partition that never answered a fetch: nothing arrives from it
        return out
    finally:
        await consumer.stop()


async def read_dead_letters(bootstrap: str, dlq_topic: str) -> tuple[list[DeadLetter], set[str]]:
    """The DLQ's records and the places already replayed."""
    records, marks = await asyncio.gather(
        read_to_end(bootstrap, dlq_topic), read_to_end(bootstrap, markers_topic(dlq_topic))
    )
    replayed = {m.key.decode() for m in marks if m.value is not None}
    return [DeadLetter.from_record(r) for r in records], replayed


async def write_markers(producer: AIOKafkaProducer, dlq_topic: str, letters: Iterable[DeadLetter], by: str) -> None:
    topic = markers_topic(dlq_topic)
    now = time.time()
    futures = [
        await producer.send(topic, json.dumps({"at": now, "by": by}).encode(), key=letter.place.encode())
        for letter in letters
    ]
    await producer.flush()
    for fut in futures:
        await fut
