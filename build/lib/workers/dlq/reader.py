"""Reading the DLQ to its current end, and the durable "already replayed" markers.

"The end" is the fetch high-water mark of each partition (ListOffsets "latest" is wrong
on the embedded broker, EMBEDDED-BROKER.md trap 2; on Kafka both agree). Markers live
in a compacted topic ``<dlq>.replayed``, one record per run of consecutive DLQ offsets
(key ``partition:first-last``), written only after the republished records were
acknowledged: a second `replay` skips what the first one republished, whatever filters
either used.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import defaultdict
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


class Replayed:
    """DLQ places already replayed, held as sorted runs of offsets per partition."""

    def __init__(self, runs: Iterable[tuple[int, int, int]] = ()) -> None:
        by_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for partition, first, last in runs:
            by_partition[partition].append((first, last))
        self._runs = {p: sorted(found) for p, found in by_partition.items()}
        self._starts = {p: [first for first, _ in found] for p, found in self._runs.items()}

    def __contains__(self, place: object) -> bool:
        _, partition, offset = str(place).rsplit(":", 2)
        starts = self._starts.get(int(partition))
        if not starts:
            return False
        i = bisect.bisect_right(starts, int(offset)) - 1
        return i >= 0 and self._runs[int(partition)][i][1] >= int(offset)


def runs_of(letters: Iterable[DeadLetter]) -> list[tuple[int, int, int]]:
    """(partition, first offset, last offset) for each run of consecutive DLQ offsets."""
    offsets: dict[int, list[int]] = defaultdict(list)
    for letter in letters:
        offsets[letter.dlq_partition].append(letter.dlq_offset)
    runs = []
    for partition, found in offsets.items():
        found.sort()
        first = prev = found[0]
        for offset in found[1:]:
            if offset != prev + 1:
                runs.append((partition, first, prev))
                first = offset
            prev = offset
        runs.append((partition, first, prev))
    return runs


async def read_dead_letters(bootstrap: str, dlq_topic: str) -> tuple[list[DeadLetter], Replayed]:
    """The DLQ's records and the places already replayed."""
    records, marks = await asyncio.gather(
        read_to_end(bootstrap, dlq_topic), read_to_end(bootstrap, markers_topic(dlq_topic))
    )
    runs = []
    for mark in marks:
        if mark.value is not None:
            partition, _, span = mark.key.decode().partition(":")
            first, _, last = span.partition("-")
            runs.append((int(partition), int(first), int(last)))
    return [DeadLetter.from_record(r) for r in records], Replayed(runs)


async def write_markers(producer: AIOKafkaProducer, dlq_topic: str, letters: Iterable[DeadLetter], by: str) -> None:
    """Mark ``letters`` replayed: one marker per run of consecutive offsets, not one per record."""
    topic = markers_topic(dlq_topic)
    body = json.dumps({"at": time.time(), "by": by}).encode()
    futures = [
        await producer.send(topic, body, key=f"{p}:{first}-{last}".encode()) for p, first, last in runs_of(letters)
    ]
    await producer.flush()
    for fut in futures:
        await fut
