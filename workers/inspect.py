"""Views of the aggregates this worker owns (tables.inspect), for its pages and the CLI.

Read from the state store between awaits, so a view is one consistent snapshot of what
the last settled or current batch wrote. Only aggregates in the store's ``held``
index (buffered events or parked) can need attention, so listing never scans every key.
Nothing here changes the store: a page asked during a table recovery must not leave the
sweep an index built from half-recovered tables.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka.partitioner import murmur2

from tables.inspect import AggregateView, oldest_first, view
from workers.processor.store import StateStore


def held_views(store: StateStore, active: Iterable[int], now: float) -> list[AggregateView]:
    """Parked and gapped aggregates of the ``active`` partitions, the longest waiting first."""
    partitions = frozenset(active)
    if store._indexed_for == partitions:  # the sweep keeps the index for this assignment
        held = [(key, p) for key, p in list(store.held.items()) if p in partitions]
    else:  # the assignment moved since the last sweep: look at every key, leave the index alone
        held = list(store.keys(partitions))
    views = [view(key.decode("utf-8", "replace"), p, store.load(key, p).agg, now) for key, p in held]
    return oldest_first(views)


def aggregate_view(store: StateStore, aggregate_id: str, partition: int, now: float) -> AggregateView | None:
    """The aggregate's view, or None if this worker holds no state for it on ``partition``
    (a standby copy of another partition is not this worker's to show)."""
    key = aggregate_id.encode()
    if not store.holds(key, partition):
        return None
    return view(aggregate_id, partition, store.load(key, partition).agg, now)


def partition_of(aggregate_id: str, partitions: int) -> int:
    """The partition of an aggregate's records: keyed by its ID, placed by the default
    partitioner (murmur2, as aiokafka's DefaultPartitioner and the Java client; the worker
    routes records keyed otherwise through the repartition topic the same way)."""
    return (murmur2(aggregate_id.encode()) & 0x7FFFFFFF) % partitions


def state_partition(store: StateStore, aggregate_id: str, active: Iterable[int]) -> int | None:
    """The active partition this worker holds the aggregate's state on, if any. Usually the
    key's murmur2 partition; another one if its producer placed records by another partitioner."""
    return store.partition_holding(aggregate_id.encode(), frozenset(active))
