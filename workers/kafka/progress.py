"""Which ordered partitions the worker has read to their end, and since when: the gap clock's
"idle" signal (tables.clock).

The fetch loop records an observation between fetches, when every record it was handed
has been processed (workers/kafka/delivery.py). A partition is complete as of the wall
time of the last fetch response that covered it if the consumer's position has reached
that response's high-water mark. Read in this order (time, high-water mark, position),
a fetch that lands between the reads can only make the answer "not complete".

It reads aiokafka's per-partition fetch state inside Faust's consumer thread (checked
against aiokafka 0.14.0 and faust-streaming 0.15.3): plain attribute reads.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Place = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Complete:
    """``place`` was read to its end as of ``at`` (wall seconds), in rebalance ``generation``,
    between the same two seeks (``seeks``: the delivery's seek count when it was observed)."""

    generation: int
    at: float | None  # None: not read to its end (lagging, paused, or never fetched)
    seeks: int = 0


def observe(
    consumer: Any, topics: Collection[str], generation: int, into: dict[Place, Complete], seeks: int = 0
) -> None:
    """Record, for each assigned partition of ``topics``, whether and since when it is complete.
    ``seeks`` must be read before this is called: a seek that starts meanwhile voids the record."""
    try:
        assignment = consumer._thread._ensure_consumer()._subscription.subscription.assignment
        assigned = consumer.assignment()
    except Exception:  # noqa: BLE001 - between assignments: nothing to record
        return
    if assignment is None:
        return
    for tp in assigned:
        if tp.topic in topics:
            into[(tp.topic, tp.partition)] = Complete(generation, _complete_at(assignment.state_value(tp)), seeks)


def _complete_at(state: Any) -> float | None:
    if state is None:
        return None
    fetched_ms = state.timestamp  # first: a later fetch can only raise the high-water mark
    highwater = state.highwater
    if fetched_ms is None or highwater is None or not state.has_valid_position:
        return None
    return fetched_ms / 1000.0 if state.position >= highwater else None


def complete_at(
    seen: Mapping[Place, Complete], places: Collection[Place], generation: int, seeks: int = 0
) -> dict[str, float | None]:
    """Per topic of ``places``: since when it is complete, None if not (or not known this
    generation, or observed before the last seek: a seek moves the position back, to records
    not read yet, whatever the fetch state said before it)."""
    out: dict[str, float | None] = {}
    for topic, partition in places:
        obs = seen.get((topic, partition))
        valid = obs is not None and obs.generation == generation and obs.seeks == seeks
        out[topic] = obs.at if valid and obs is not None else None
    return out
