"""The ordering decisions for one aggregate: pure Python, no I/O, the clock passed in.

The binding calls, per decoded event:

* ``decide`` -> a Decision: what to do with the event (run its handler, hold it,
  skip it, dead-letter it, or drain released events and decide again);
* after a handler succeeded, ``applied``; then ``pop_ready`` until it returns None,
  applying each event it returns (events released from the buffer, in order);
* after a handler failed for good (the event went to the DLQ), ``failed``.

Timers and operators use ``tables.timers``. Every function mutates the ``Aggregate``
in place and returns what happened as a value, never as an exception. Invariant: the
next expected sequence of an aggregate never moves backwards.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tables.policy import OverflowPolicy, Policy, StartPolicy
from tables.reorder import Buffered, RawRecord
from tables.sequence import Parked
from tables.state import FIXED_BYTES, Aggregate
from tables.timers import Gap, skip_gap


class Verdict(enum.Enum):
    APPLY = "apply"  # in order (or unordered): run the handler now
    BUFFERED = "buffered"  # ahead of the sequence: held in the reorder buffer
    HELD = "held"  # the aggregate is parked: held in the buffer
    DUPLICATE = "duplicate"  # already applied or already buffered: skipped
    LATE = "late"  # behind the sequence and never seen: an order violation
    CONFLICT = "conflict"  # another event already holds this sequence number
    OVERFLOW = "overflow"  # the buffer is full


class Action(enum.Enum):
    RUN = "run"  # run the handler, then ``applied`` or ``failed``
    HOLD = "hold"  # kept in the buffer: nothing to do now
    SKIP = "skip"  # a duplicate: nothing to do
    DEAD_LETTER = "dead_letter"  # send it to the DLQ as ``Decision.verdict`` says; the aggregate is unchanged
    DRAIN_AND_RETRY = "drain_and_retry"  # a gap was given up on: drain, record the gap, decide again


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    action: Action
    reason: str = ""  # why, for a dead letter or a log line
    gap: Gap | None = None  # with DRAIN_AND_RETRY: the numbers given up on


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~1 µs per event
class Incoming:
    """What the core needs to know of an event (the core never changes it)."""

    seq: int | None
    key: str  # idempotency key: source + id
    type: str
    record: RawRecord | None = None  # the input record, kept verbatim if buffered
    at: float | None = None  # when its wait begins on the gap clock (tables.clock); None: ``now``


@dataclass(frozen=True, slots=True)
class Limits:
    max_buffered: int = 10_000  # per aggregate
    max_seen: int = 10_000  # per aggregate; older IDs also expire by TTL
    max_record_bytes: int = 900_000  # one aggregate's encoded state record
    overflow: OverflowPolicy = "dead_letter"
    start: StartPolicy = "from_one"

    @property
    def max_buffer_bytes(self) -> int:
        """The buffer may fill three quarters of the record; the seen IDs get what is left."""
        return (self.max_record_bytes - FIXED_BYTES) * 3 // 4


#: The decisions of the common verdicts, made once (one per event would be per-event garbage).
_RUN = Decision(Verdict.APPLY, Action.RUN)
_HOLD = {Verdict.BUFFERED: Decision(Verdict.BUFFERED, Action.HOLD), Verdict.HELD: Decision(Verdict.HELD, Action.HOLD)}
_SKIP = Decision(Verdict.DUPLICATE, Action.SKIP)


def decide(
    agg: Aggregate, event: Incoming, policy: Policy, now: float, limits: Limits, *, room: bool = True
) -> Decision:
    """What to do with an arriving event. ``room``: its partition's buffers have room.

    On overflow under ``skip_gap`` the oldest gap is given up on (DRAIN_AND_RETRY): the
    binding drains what it released and decides again, until the event fits or nothing
    waits any more. Every skip releases at least one buffered event, so this ends.
    """
    verdict = receive(agg, event, policy, now, limits=limits, room=room)
    if verdict is Verdict.APPLY:
        return _RUN
    if verdict is Verdict.BUFFERED or verdict is Verdict.HELD:
        return _HOLD[verdict]
    if verdict is Verdict.DUPLICATE:
        return _SKIP
    next_seq = agg.seq.next_seq
    if verdict is Verdict.LATE:
        if policy.ordering == "warn":
            return Decision(verdict, Action.RUN, f"late event: sequence {event.seq} is behind {next_seq}, applied")
        why = f"late event: sequence {event.seq} is behind the next expected {next_seq} and was never applied"
        return Decision(verdict, Action.DEAD_LETTER, why)
    if verdict is Verdict.CONFLICT:
        return Decision(verdict, Action.DEAD_LETTER, f"sequence {event.seq} is already held by another event")
    if limits.overflow == "skip_gap" and agg.seq.parked is None and agg.buffer.waiting():
        gap = skip_gap(agg)  # as if its timeout had passed
        if gap is not None:
            return Decision(verdict, Action.DRAIN_AND_RETRY, "reorder buffer full: skipping the oldest gap", gap)
    why = f"reorder buffer full ({len(agg.buffer)} held, {agg.buffer.nbytes} bytes for this aggregate)"
    return Decision(verdict, Action.DEAD_LETTER, why if room else why + "; its partition's buffers are full")


def receive(
    agg: Aggregate, event: Incoming, policy: Policy, now: float, *, limits: Limits = Limits(), room: bool = True
) -> Verdict:
    """The verdict on an arriving event; a BUFFERED or HELD event is in the buffer on return."""
    state = agg.seq
    state.last_active = now
    if event.key in agg.seen:
        return Verdict.DUPLICATE
    if state.next_seq is None and event.seq is not None:
        # Before the unordered return: an unordered event's number must count too.
        state.next_seq = 1 if limits.start == "from_one" else event.seq
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
    entry = Buffered(seq, event.key, event.type, now if event.at is None else event.at, event.record)
    if not room or len(agg.buffer) >= limits.max_buffered or not _fits(agg, entry, limits):
        return Verdict.OVERFLOW
    agg.buffer.put(entry)
    _fit_seen(agg, limits)
    return Verdict.HELD if parked is not None else Verdict.BUFFERED


def _fits(agg: Aggregate, entry: Buffered, limits: Limits) -> bool:
    return agg.buffer.nbytes + entry.nbytes <= limits.max_buffer_bytes


def _fit_seen(agg: Aggregate, limits: Limits) -> None:
    """Forget the oldest seen IDs until the whole record fits (a dedupe window, not a ledger)."""
    budget = limits.max_record_bytes - FIXED_BYTES - agg.buffer.nbytes
    agg.seen.trim_to_bytes(budget)


def applied(agg: Aggregate, event: Incoming, now: float, *, limits: Limits = Limits()) -> None:
    """Record a successful apply: the ID is seen, the sequence moves on, parking ends.

    When the sequence moves on, what still waits starts waiting for the next gap at the
    event's ``at`` (its gap-clock time; ``now`` without one)."""
    agg.seen.add(event.key, now, limits.max_seen)
    _fit_seen(agg, limits)
    state = agg.seq
    seq = event.seq
    if seq is None:
        return
    if state.parked is not None and state.parked.seq == seq:
        state.parked = None
    if state.next_seq is not None and seq == state.next_seq:
        state.next_seq = seq + 1
        agg.buffer.restart_waits(now if event.at is None else event.at)
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
    """Record that ``event``'s handler failed for good (it went to the DLQ). True if now parked.

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


__all__ = [
    "Action",
    "Aggregate",
    "Decision",
    "Gap",
    "Incoming",
    "Limits",
    "Verdict",
    "applied",
    "decide",
    "failed",
    "pop_ready",
    "receive",
]
