"""Decisions taken by time and by operators: gap timeouts, TTL expiry, resolve.

Pure, like tables.sequencer: the clock is passed in and every outcome is a value. For
gaps, ``now`` is the aggregate's partition clock (tables.clock), never plain wall time.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tables.policy import Policy
from tables.reorder import Buffered
from tables.sequence import Parked
from tables.state import Aggregate


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers ``first..last`` given up on after a gap timeout or by an operator."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def _waiting(agg: Aggregate) -> Buffered | None:
    """The lowest buffered event that waits (``done`` placeholders do not wait)."""
    return min((b for b in agg.buffer.items.values() if not b.done), key=lambda b: b.seq, default=None)


def gap_due(agg: Aggregate, policy_of: Callable[[str], Policy], now: float) -> bool:
    """Whether ``expire_gap`` would act now (the oldest buffered event waited too long).

    ``now`` is the partition's gap clock: stream time, or wall time while idle.
    """
    if agg.seq.parked is not None or agg.seq.next_seq is None:
        return False
    waiting = _waiting(agg)
    oldest = agg.buffer.oldest_at()
    if waiting is None or oldest is None:
        return False
    return now - oldest > policy_of(waiting.type).gap_timeout


def skip_gap(agg: Aggregate, at: float | None = None) -> Gap | None:
    """Give up on the numbers below the lowest buffered event; the next number moves up to it.
    With ``at`` (the gap clock), a gap behind the released events gets its own timeout from then.

    Entries below the next number (none should exist) are dropped, so a Gap is never empty
    and the next number never moves backwards.
    """
    state = agg.seq
    if state.next_seq is None:
        return None
    agg.buffer.drop_below(state.next_seq)
    lowest = agg.buffer.lowest()
    if lowest is None or lowest.seq <= state.next_seq:
        return None
    gap = Gap(state.next_seq, lowest.seq - 1)
    state.next_seq = lowest.seq
    if at is not None:
        agg.buffer.restart_waits(at)
    return gap


def expire_gap(agg: Aggregate, policy_of: Callable[[str], Policy], now: float) -> Gap | Parked | None:
    """Act on a gap whose timeout has passed: skip it (returns the Gap) or park (returns Parked).

    ``policy_of`` maps an event type to its Policy; the type of the lowest buffered
    event, the one that waits, decides.
    """
    if not gap_due(agg, policy_of, now):
        return None
    waiting = _waiting(agg)
    assert waiting is not None and agg.seq.next_seq is not None
    if policy_of(waiting.type).gap_policy == "park":
        agg.seq.parked = Parked(agg.seq.next_seq, "gap", now)
        return agg.seq.parked
    return skip_gap(agg, now)


@dataclass(frozen=True, slots=True)
class Resolved:
    skip_to: int
    was_next: int | None
    gap: Gap | None  # the numbers given up on, if any
    dropped: list[Buffered]  # buffered events below ``skip_to``: they go to the DLQ


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


def resolve_request(agg: Aggregate, request: Any, now: float, max_sequence: int) -> Resolved | Refused:
    """An operator's resolve request (the control event's data), validated, then carried out."""
    if not isinstance(request, Mapping):
        return Refused("the request is not an object")
    skip_to = request.get("skip_to")
    if type(skip_to) is not int or not 1 <= skip_to <= max_sequence:
        return Refused(f"skip_to must be an integer from 1 to {max_sequence}, not {skip_to!r}")
    was_next = agg.seq.next_seq
    gap, dropped = resolve(agg, skip_to, now)
    return Resolved(skip_to, was_next, gap, dropped)


def resolve(agg: Aggregate, skip_to: int, now: float) -> tuple[Gap | None, list[Buffered]]:
    """An operator un-parks the aggregate, giving up on every number below ``skip_to``.

    Returns the skipped Gap (if any numbers were skipped) and the buffered events
    dropped because they are below ``skip_to``.
    """
    state = agg.seq
    state.parked = None
    state.last_active = now
    current = state.next_seq if state.next_seq is not None else 1
    # ``done`` placeholders were applied already: they are forgotten, not reported as dropped.
    dropped = [b for b in agg.buffer.drop_below(skip_to) if not b.done]
    gap = Gap(current, skip_to - 1) if skip_to > current else None
    state.next_seq = max(current, skip_to)
    return gap, dropped


def gap_record(agg: Aggregate, result: Gap | Parked) -> tuple[str, dict[str, Any]]:
    """The audit record of a gap given up on (``gap_skipped``) or parked on (``gap_parked``)."""
    lowest = agg.buffer.lowest()
    event_type = lowest.type if lowest else ""
    if isinstance(result, Gap):
        return "gap_skipped", {"first": result.first, "last": result.last, "type": event_type}
    return "gap_parked", {"seq": result.seq, "type": event_type}


class Expiry(enum.Enum):
    KEEP = "keep"  # unchanged
    PRUNED = "pruned"  # old seen IDs forgotten: write the record
    FORGET = "forget"  # idle with nothing held: delete the record


def expire_idle(agg: Aggregate, now: float, ttl: float) -> Expiry:
    """The TTL pass over one aggregate: forget old seen IDs, or the whole idle aggregate.

    Parked aggregates and ones with buffered events are never forgotten silently.
    """
    if is_idle(agg, now, ttl):
        return Expiry.FORGET
    return Expiry.PRUNED if agg.seen.prune(now, ttl) else Expiry.KEEP


def is_idle(agg: Aggregate, now: float, ttl: float) -> bool:
    return now - agg.seq.last_active > ttl and not len(agg.buffer) and agg.seq.parked is None
