"""The DLQ agent's place in the DLQ: the waiting records, kept in memory between passes.

The plan needs every waiting record (an aggregate's records are replayed in sequence order,
whatever partition and pass they arrived in), so the agent reads the DLQ and its markers once
from the start, at start-up, and after that only what was appended since (a position per
partition of both topics). A record leaves the index when a marker covers its place: ours,
read back the next pass, or an operator's ``seqguard dlq replay``. Markers are kept as runs
and checked against records that arrive later too, since a marker can be read before the
record it covers (the two topics are read side by side).

The index is the source of nothing: it is rebuilt from Kafka at every start, and a pass that
fails leaves it as it was (a read is applied only once it completed). A committed consumer
group position would not do: it says where to read from, not what waits before it.
Memory: the waiting records, as a full read held them before, no more.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from workers.dlq.reader import IDLE_TIMEOUT, Replayed
from workers.dlq.records import DeadLetter
from workers.dlq.replay import Filters, Plan, make_plan
from workers.kafka import clients
from workers.settings import Settings

POLL_MS = 200


def marker_runs(records: list[Any]) -> list[tuple[int, int, int]]:
    """(DLQ partition, first offset, last offset) of each marker record (key ``p:first-last``)."""
    runs = []
    for mark in records:
        if mark.value is None or mark.key is None:  # a tombstone, or not one of ours
            continue
        partition, _, span = mark.key.decode("utf-8", "replace").partition(":")
        first, _, last = span.partition("-")
        if partition.isdecimal() and first.isdecimal() and last.isdecimal():
            runs.append((int(partition), int(first), int(last)))
    return runs


class DeadLetterIndex:
    """Waiting DLQ records by place, brought up to date by ``refresh``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.positions: dict[TopicPartition, int] = {}  # next offset to read, DLQ and markers
        self.waiting: dict[str, DeadLetter] = {}
        self.runs: list[tuple[int, int, int]] = []
        self.replayed = Replayed()
        self.already_replayed = 0  # DLQ records read that a marker covers

    async def refresh(self) -> int:
        """Read what was appended to the DLQ and the markers since the last refresh (everything,
        the first time); returns how many records were read. Cancellable: nothing is applied
        until the read completed."""
        topics = (self.settings.dlq, self.settings.markers_topic)
        records, positions = await read_from(clients.kafka(self.settings), topics, self.positions)
        letters = [DeadLetter.from_record(r) for r in records if r.topic == self.settings.dlq]
        runs = marker_runs([r for r in records if r.topic == self.settings.markers_topic])
        self.positions = positions
        if runs:
            self.runs += runs
            self.replayed = Replayed(self.runs)
            for place in [place for place in self.waiting if place in self.replayed]:
                del self.waiting[place]
                self.already_replayed += 1
        for letter in letters:
            if letter.place in self.replayed:
                self.already_replayed += 1
            else:
                self.waiting[letter.place] = letter
        return len(records)

    def plan(self, filters: Filters = Filters()) -> Plan:  # noqa: B008 - frozen dataclass
        """What ``load_plan`` would plan now, from memory."""
        plan = make_plan(list(self.waiting.values()), (), filters, self.settings.max_replays)
        plan.already_replayed = self.already_replayed
        return plan


async def read_from(
    bootstrap: clients.Target, topics: tuple[str, ...], positions: dict[TopicPartition, int]
) -> tuple[list[Any], dict[TopicPartition, int]]:
    """Records of ``topics`` from ``positions`` (a partition not in it: from its start) to the
    fetch high-water mark of each partition (workers/kafka/read.py: never ListOffsets), and the
    positions after them. Partitions are looked up every time: one added later is read too."""
    consumer = clients.consumer(
        bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a position retention has deleted: from what is left
        fetch_max_wait_ms=100,
    )
    try:
        await consumer.start()  # in the try: stopped after a failed start too
        await consumer.topics()  # metadata of all topics: naming one would auto-create it on Tansu
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return [], dict(positions)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, positions.get(tp, 0))
        records = await _to_highwater(consumer, tps)
    finally:
        await consumer.stop()
    after = {tp: positions.get(tp, 0) for tp in tps}
    by_tp: dict[TopicPartition, int] = defaultdict(int)
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        by_tp[tp] = max(by_tp[tp], r.offset + 1)
    after.update({tp: max(after[tp], end) for tp, end in by_tp.items()})
    return records, after


async def _to_highwater(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> list[Any]:
    """Fetch until every partition's position reached its high-water mark, or nothing new came
    for IDLE_TIMEOUT s (a partition that never answers a fetch)."""
    now = asyncio.get_running_loop().time
    last_new = now()
    out: list[Any] = []
    pending = set(tps)
    while pending and now() - last_new <= IDLE_TIMEOUT:
        batch = await consumer.getmany(timeout_ms=POLL_MS)
        for msgs in batch.values():
            if msgs:
                out.extend(msgs)
                last_new = now()
        for tp in list(pending):
            highwater = consumer.highwater(tp)
            if highwater is not None and await consumer.position(tp) >= highwater:
                pending.discard(tp)
                consumer.pause(tp)  # "to the end as of now": nothing appended later
    return out
