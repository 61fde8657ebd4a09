"""Start-up check of the timeouts against each other: a worker whose settings cannot hold
its group membership through its own slowest event refuses to start (exit 2).

* heartbeat interval <= session timeout / 3 (Kafka's advice): one lost heartbeat must
  not cost the membership;
* rebalance timeout >= session timeout: the write lease (workers/kafka/lease.py) runs
  out, and stops a batch's writes, before a rebalance can evict the member;
* one event's worst case (attempts x its handler's time limit, plus the retry delays)
  < rebalance timeout: otherwise a revocation waits on that event past the point where
  the group evicts the worker, every time, and the partition never makes progress
  (an event waiting for an outage asks the fence between retries: it does not count);
* handler time limit < effect lease < effect TTL: a claim outlives the effect it guards.
"""

from __future__ import annotations

from collections.abc import Iterable

from workers.errors import StartupError
from workers.settings import Settings


def worst_event_seconds(settings: Settings, handler_timeouts: Iterable[float | None] = ()) -> float:
    """The longest one event can hold a batch: every attempt times out, with every retry delay."""
    limit = max([settings.handler_timeout, *(t for t in handler_timeouts if t is not None)])
    delays = sum(
        min(settings.retry_max_delay, settings.retry_base_delay * 2 ** (attempt - 1))
        for attempt in range(1, settings.handler_attempts)
    )
    return settings.handler_attempts * limit + delays


def problems(settings: Settings, handler_timeouts: Iterable[float | None] = ()) -> list[str]:
    s = settings
    found = []
    if s.heartbeat_interval * 3 > s.session_timeout:
        found.append(
            f"SEQGUARD_HEARTBEAT_INTERVAL={s.heartbeat_interval:g} is over a third of "
            f"SEQGUARD_SESSION_TIMEOUT={s.session_timeout:g}"
        )
    if s.rebalance_timeout < s.session_timeout:
        found.append(
            f"SEQGUARD_REBALANCE_TIMEOUT={s.rebalance_timeout:g} is under SEQGUARD_SESSION_TIMEOUT="
            f"{s.session_timeout:g}: a rebalance could evict the worker while it still writes"
        )
    worst = worst_event_seconds(s, handler_timeouts)
    if worst >= s.rebalance_timeout:
        found.append(
            f"one event can take {worst:g} s (SEQGUARD_HANDLER_ATTEMPTS={s.handler_attempts} x the longest "
            f"handler time limit, plus retry delays), not under SEQGUARD_REBALANCE_TIMEOUT={s.rebalance_timeout:g}: "
            "lower the handler timeout or the attempts, or raise the rebalance timeout"
        )
    if s.effect_lease <= max([s.handler_timeout, *(t for t in handler_timeouts if t is not None)]):
        found.append(
            f"SEQGUARD_EFFECT_LEASE={s.effect_lease:g} is not over the longest handler time limit: a claim "
            "could run out while its effect still runs, and another worker run it at the same time"
        )
    if s.effect_lease >= s.effect_ttl:
        found.append(f"SEQGUARD_EFFECT_LEASE={s.effect_lease:g} is not under SEQGUARD_EFFECT_TTL={s.effect_ttl:g}")
    return found


def check(settings: Settings, handler_timeouts: Iterable[float | None] = ()) -> None:
    found = problems(settings, handler_timeouts)
    if found:
        raise StartupError("timeouts that cannot work together: " + "; ".join(found))
