"""The write fence: may a batch fetched in one rebalance generation still be processed and acked?

A rebalance (Faust counts them) or an expired membership lease (workers/kafka/lease.py)
closes it; workers/kafka/delivery.py asks before each chunk, the processor before each
handler and each write, and the delivery before each ack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

from workers.records import InRecord

log = logging.getLogger(__name__)

#: Why the batch may not write (its partitions moved, or the lease ran out); None: it may.
Fence = Callable[[], str | None]
#: Seconds of membership lease left for a consumer (workers/kafka/lease.py).
LeaseLeft = Callable[[Any], float]


def fenced(
    records: Sequence[InRecord], assigned: Collection[Any], generation_at_fetch: int, generation_now: int
) -> tuple[list[InRecord], list[InRecord]]:
    """(kept, dropped): a record is kept only if no rebalance began since its fetch and its
    partition is still assigned. ``assigned`` holds (topic, partition) pairs (Faust's TPs are)."""
    if generation_now != generation_at_fetch:
        return [], list(records)
    kept: list[InRecord] = []
    dropped: list[InRecord] = []
    for record in records:
        (kept if (record.topic, record.partition) in assigned else dropped).append(record)
    return kept, dropped


def generation(consumer: Any) -> int:
    """Faust counts rebalances in the rebalance listener, in the consumer thread, before the
    revocation reaches the event loop: it changes before any bookkeeping is dropped."""
    return int(consumer.app.rebalancing_count)


def write_fence(consumer: Any, lease_left: LeaseLeft | None, fetch_generation: int) -> Fence:
    """Cheap enough to ask before every handler: a revocation always begins a new generation."""

    def why_not() -> str | None:
        if generation(consumer) != fetch_generation:
            return "a rebalance began"
        if lease_left is not None and lease_left(consumer) <= 0:
            return "the group membership lease ran out (no heartbeat confirmed within the session timeout)"
        return None

    return why_not


async def wait_writable(consumer: Any, lease_left: LeaseLeft | None, fetch_generation: int) -> bool:
    """Wait until the lease is confirmed (a frozen worker waits here on resuming). False if a
    rebalance began meanwhile or the consumer stops: the fetch is stale."""
    if lease_left is None:
        return True
    waited = False
    while lease_left(consumer) <= 0:
        if not waited:
            log.warning("membership lease expired: holding batches until a heartbeat is confirmed or a rebalance")
            waited = True
        if generation(consumer) != fetch_generation or consumer.should_stop:
            return False
        await asyncio.sleep(0.05)
    return generation(consumer) == fetch_generation
