"""Reading the DLQ to its current end, and the durable "already replayed" markers.

"The end" is the fetch high-water mark of each partition (``workers.kafka.read``:
ListOffsets "latest" is wrong on the embedded broker, docs/embedded-broker.md; on Kafka
both agree). Markers live in a compacted topic, ``<dlq>.replayed``
(``Settings.markers_topic``), one record per run of consecutive DLQ offsets (key
``partition:first-last``), written only after the republished records were acknowledged:
a second `replay` skips what the first one republished, whatever filters either used.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections import defaultdict
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer

from workers.dlq.records import DeadLetter
from workers.kafka import clients
from workers.kafka.read import read_to_end
from workers.settings import Settings

#: A partition that never answers a fetch: give up on it after this many quiet seconds.
IDLE_TIMEOUT = 5.0


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


async def read_dead_letters(settings: Settings) -> tuple[list[DeadLetter], Replayed]:
    """The DLQ's records and the places already replayed."""
    bootstrap = clients.kafka(settings)  # one TLS context for both reads
    records, marks = await asyncio.gather(
        read_to_end(bootstrap, settings.dlq, quiet=IDLE_TIMEOUT, fetch_wait_ms=100),
        read_to_end(bootstrap, settings.markers_topic, quiet=IDLE_TIMEOUT, fetch_wait_ms=100),
    )
    runs = []
    for mark in marks.records:
        if mark.value is not None:
            partition, _, span = mark.key.decode().partition(":")
            first, _, last = span.partition("-")
            runs.append((int(partition), int(first), int(last)))
    return [DeadLetter.from_record(r) for r in records.records], Replayed(runs)


async def write_markers(producer: AIOKafkaProducer, topic: str, letters: Iterable[DeadLetter], by: str) -> None:
    """Mark ``letters`` replayed in the markers ``topic``: one marker per run of consecutive
    offsets, not one per record."""
    body = json.dumps({"at": time.time(), "by": by}).encode()
    futures = [
        await producer.send(topic, body, key=f"{p}:{first}-{last}".encode()) for p, first, last in runs_of(letters)
    ]
    await producer.flush()
    for fut in futures:
        await fut
