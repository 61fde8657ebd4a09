"""The group membership lease: how long this worker may still write for its partitions.

Without Kafka transactions (the embedded broker has none, docs/embedded-broker.md) a
worker cannot be fenced by the broker. A worker that was frozen (SIGSTOP, a GC pause, a
throttled container, a network partition) past its session timeout has lost its
partitions to another member, yet resumes in the middle of a batch believing it owns them.

The group coordinator evicts a member only after ``session_timeout`` without a
heartbeat, and (rebalance timeout >= session timeout, checked at start-up) not before
a rebalance it joined has run that long. So a member that sent a heartbeat at ``t`` and
was answered OK still owns its partitions until ``t + session_timeout``. seqguard writes
(state, output, DLQ, audit) only within that lease, less a margin; past it the batch is
dropped and read again once a heartbeat succeeds or the rebalance is over.

Patched: aiokafka's ``GroupCoordinator._do_heartbeat`` and ``_on_join_complete`` (checked
against aiokafka 0.14.0) record when the last confirmation was sent. They run in Faust's
consumer thread; reading one float from the event loop's thread is safe.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka.consumer.group_coordinator import GroupCoordinator

_CONFIRMED = "_seqguard_confirmed"


def install() -> None:
    cls: Any = GroupCoordinator
    if getattr(cls, "_seqguard_lease", False):
        return
    heartbeat = cls._do_heartbeat
    join_complete = cls._on_join_complete

    async def do_heartbeat(self: Any) -> Any:
        sent = time.monotonic()  # the request's send time: the coordinator saw it after this
        ok = await heartbeat(self)
        if ok:
            setattr(self, _CONFIRMED, sent)
        return ok

    async def on_join_complete(self: Any, *args: Any, **kwargs: Any) -> Any:
        sent = time.monotonic()
        result = await join_complete(self, *args, **kwargs)
        setattr(self, _CONFIRMED, sent)  # a completed join is a confirmation too
        return result

    cls._do_heartbeat = do_heartbeat
    cls._on_join_complete = on_join_complete
    cls._seqguard_lease = True


def margin(session_timeout: float, heartbeat_interval: float) -> float:
    """Time kept in hand: two missed heartbeats, at least a tenth of the session."""
    return max(2 * heartbeat_interval, session_timeout / 10)


def lease_left(consumer: Any, session_timeout: float, heartbeat_interval: float) -> float:
    """Seconds this member may still write for its partitions (<= 0: not at all)."""
    try:
        coordinator = consumer._thread._ensure_consumer()._coordinator
    except Exception:  # noqa: BLE001 - no consumer (yet): no lease
        return 0.0
    confirmed = getattr(coordinator, _CONFIRMED, None)
    if confirmed is None:
        return 0.0
    return confirmed + session_timeout - margin(session_timeout, heartbeat_interval) - time.monotonic()
