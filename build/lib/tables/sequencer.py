"""The ordering decisions for one aggregate: pure Python, no I/O, the clock passed in.

The binding calls, per decoded event:

* ``receive`` -> a Verdict. ``APPLY`` means: run the handler now.
* after a handler succeeded, ``applied``; then ``pop_ready`` until it returns None,
  applying each event it returns (events released from the buffer, in order).
* after a handler failed for good (the event went to the DLQ), ``failed``.
* from a timer, ``expire_gap``; from an operator, ``resolve``.

Every function mutates the ``Aggregate`` in place and returns what happened as a
value, never as an exception.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from tables.policy import Policy, StartPolicy
from tables.reorder import Buffered, ReorderBuffer
from tables.seen import SeenIds
from tables.sequence import Parked, SequenceState


class Verdict(enum.Enum):
    APPLY = "apply"  # in order (or unordered): run the handler now
    BUFFERED = "buffered"  # ahead of the sequence: held in the reorder buffer
    HELD = "held"  # the aggregate is parked: held in the buffer
    DUPLICATE = "duplicate"  # already applied or already buffered: skipped
    LATE = "late"  # behind the sequence and never seen: an order violation
    CONFLICT = "conflict"  # another event already holds this sequence number
    OVERFLOW = "overflow"  # the buffer is full


@dataclass(frozen=True, slots=True)
class Incoming:
    """What the core needs to know of an event."""

    seq: int | None
    key: str  # idempotency key: source + id
    type: str
    record: Any = None  # the binding's JSON-able copy of the input, kept if buffered


@dataclass(frozen=True, slots=True)
class Gap:
    """Sequence numbers ``first..last`` given up on after a gap timeout or by an operator."""

    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Limits:
    max_buffered: int = 10_000  # per aggregate
    max_seen: int = 10_000  # per aggregate; older IDs also expire by TTL


@dataclass(slots=True)
class Aggregate:
    """All state of one aggregate; each part is persisted in its own table."""

    seq: SequenceState = field(default_factory=SequenceState)
    buffer: ReorderBuffer = field(default_factory=ReorderBuffer)
    seen: SeenIds = field(default_factory=SeenIds)


def receive(
    agg: Aggregate,
    event: Incoming,
    policy: Policy,
    now: float,
    *,
    start: StartPolicy = "from_one",
    limits: Limits = Limits(),
    room: bool = True,
) -> Verdict:
    """Decide what to do with an arriving event. ``room``: the partition's buffers have room."""
    state = agg.seq
    state.last_active = now
    if event.key in agg.seen:
        return Verdict.DUPLICATE
    if state.next_seq is None and event.seq is not None:
        # Before the unordered return: an unordered event's number must count too.
        state.next_seq = 1 if start == "from_one" else event.seq
    if policy.ordering == "unordered" or event.seq is None:
        return Verdict.APPLY
    seq = event.seq
    assert state.next_seq is not None  # set above: this event has a number
    parked = state.parked
    if parked is not None and seq == parked.seq:
        return Verdict.APPLY  # the event the aggregate waits for: replayed or retried
    if seq < state.next_seq:
        return Verdict.LATE
    if seq == state.next_seq and parked is None:
        return Verdict.APPLY
    held = agg.buffer.get(seq)
    if held is not None:
        return Verdict.DUPLICATE if held.key == event.key else Verdict.CONFLICT
    if len(agg.buffer) >= limits.max_buffered or not room:
        return Verdict.OVERFLOW
    agg.buffer.put(Buffered(seq, event.key, event.type, now, event.record))
    return Verdict.HELD if parked is not None else Verdict.BUFFERED


def applied(agg: Aggregate, event: Incoming, now: float, *, limits: Limits = Limits()) -> None:
    """Record a successful apply: the ID is seen, the sequence moves on, parking ends."""
    agg.seen.add(event.key, now, limits.max_seen)
    state = agg.seq
    seq = event.seq
    if seq is None:
        return
    if state.parked is not None and state.parked.seq == seq:
        state.parked = None
    if state.next_seq is not None and seq == state.next_seq:
        state.next_seq = seq + 1
    elif state.next_seq is not None and seq > state.next_seq and seq not in agg.buffer:
        # Unordered event ahead of the sequence: mark its number as used.
        agg.buffer.put(Buffered(seq, event.key, event.type, now, None, done=True))


def pop_ready(agg: Aggregate) -> Buffered | None:
    """The next buffered event now in order, removed from the buffer; None if there is none."""
    state = agg.seq
    while state.parked is None and state.next_seq is not None:
        entry = agg.buffer.pop(state.next_seq)
        if entry is None:
            return None
        if not entry.done and entry.key not in agg.seen:
            return entry
        # A placeholder, or an event whose ID was applied meanwhile under another
        # number: its number is used, and applying it again would double its effect.
        state.next_seq += 1
    return None


def failed(agg: Aggregate, event: Incoming, policy: Policy, reason: str, now: float) -> bool:
    """Record that ``event`` went to the DLQ. Returns True if the aggregate is now parked.

    Ordered and strict types park the aggregate at the event's number: later events
    are held until it is replayed or an operator resolves it. Other types step over it.
    """
    state = agg.seq
    if event.seq is None or state.next_seq is None or event.seq < state.next_seq:
        return False  # unordered or late: nothing waits on it
    if policy.parks_on_failure:
        if state.parked is None:
            state.parked = Parked(event.seq, reason, now)
        return True
    if event.seq == state.next_seq:
        state.next_seq += 1
    elif event.seq not in agg.buffer:
        # Ahead of the sequence (an unordered event): mark its number as used.
        agg.buffer.put(Buffered(event.seq, event.key, event.type, now, None, done=True))
    return False


def _waiting(agg: Aggregate) -> Buffered | None:
    """The lowest buffered event that waits (``done`` placeholders do not wait)."""
    return min((b for b in agg.buffer.items.values() if not b.done), key=lambda b: b.seq, default=None)


def gap_due(agg: Aggregate, policy_of: Any, now: float) -> bool:
    """Whether ``expire_gap`` would act now (the oldest buffered event waited too long)."""
    if agg.seq.parked is not None or agg.seq.next_seq is None:
        return False
    waiting = _waiting(agg)
    oldest = agg.buffer.oldest_at()
    if waiting is None or oldest is None:
        return False
    policy: Policy = policy_of(waiting.type)
    return now - oldest > policy.gap_timeout


def expire_gap(agg: Aggregate, policy_of: Any, now: float) -> Gap | Parked | None:
    """Act on a gap whose timeout has passed: skip it (returns the Gap) or park (returns Parked).

    ``policy_of`` maps an event type to its Policy; the type of the lowest buffered
    event, the one that waits, decides.
    """
    if not gap_due(agg, policy_of, now):
        return None
    state = agg.seq
    lowest = agg.buffer.lowest()
    waiting = _waiting(agg)
    assert lowest is not None and waiting is not None and state.next_seq is not None
    policy: Policy = policy_of(waiting.type)
    if policy.gap_policy == "park":
        state.parked = Parked(state.next_seq, "gap", now)
        return state.parked
    gap = Gap(state.next_seq, lowest.seq - 1)
    state.next_seq = lowest.seq
    return gap


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


def is_idle(agg: Aggregate, now: float, ttl: float) -> bool:
    """Inactive for longer than ``ttl`` with nothing held: its state may be forgotten.

    Parked aggregates and ones with buffered events are never forgotten silently.
    """
    return now - agg.seq.last_active > ttl and not len(agg.buffer) and agg.seq.parked is None
