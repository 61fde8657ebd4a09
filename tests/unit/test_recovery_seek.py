"""Table recovery's changelog seek, through Faust's own ``Recovery._seek_offsets`` and the
real aiokafka ``seek`` check: an offset Faust does not know reads the partition from its start."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aiokafka.consumer.consumer import AIOKafkaConsumer
from faust.tables.recovery import Recovery
from faust.types import TP

from workers.kafka import recovery_seek

A, B, C = TP("app-state-changelog", 0), TP("app-state-changelog", 1), TP("app-state-changelog", 2)


class Consumer:
    """Faust's ``seek_wait`` as its aiokafka driver does it: aiokafka's ``seek`` per partition."""

    def __init__(self) -> None:
        self.sought: dict[TP, int] = {}

    async def seek_wait(self, partitions: dict[TP, Any]) -> None:
        for tp, offset in partitions.items():
            if not (isinstance(offset, int) and offset >= 0):
                # aiokafka's own check raises before it touches the client
                AIOKafkaConsumer.seek(AIOKafkaConsumer.__new__(AIOKafkaConsumer), tp, offset)
            self.sought[tp] = offset


def offsets() -> Counter[TP]:
    counter: Counter[TP] = Counter({C: 41})
    counter.setdefault(A, None)  # type: ignore[arg-type]  # Recovery._add for nothing persisted
    counter[B] = -2  # earliest offset - 1 when the broker answered -1
    return counter


async def test_fausts_own_seek_crashes_on_an_unknown_offset() -> None:
    """The contrast: what recovery did before (the worker exited)."""
    fausts = getattr(Recovery, "_seqguard_faust_seek_offsets", Recovery._seek_offsets)
    with pytest.raises(ValueError, match="positive integer"):
        await fausts(Recovery.__new__(Recovery), Consumer(), {A, B, C}, offsets(), "standby")


async def test_an_unknown_or_negative_offset_reads_the_changelog_partition_from_its_start() -> None:
    recovery_seek.install()
    consumer = Consumer()
    await Recovery._seek_offsets(Recovery.__new__(Recovery), consumer, {A, B, C}, offsets(), "standby")
    assert consumer.sought == {A: 0, B: 0, C: 41}
