"""What an operator asks about one aggregate: where its sequence is, what it waits for.

Pure, like the rest of tables/: a view is computed from the state record and a clock
passed in. The worker's /aggregates and /gaps pages, the operator page and the
``seqguard gaps`` / ``aggregate`` / ``verify`` commands all show these values.
Aggregate IDs are untrusted input: commands quote them for a POSIX shell, cursors carry
them base64-encoded, and nothing here builds HTML.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import shlex
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tables.state import Aggregate

#: Why an aggregate is listed by /gaps and ``seqguard verify``.
OPEN_GAP = "gap"  # buffered events wait for missing numbers
PARKED = "parked"  # held until an operator replays or resolves

#: /gaps page sizes: the default, and the most one request may ask for.
DEFAULT_PAGE = 100
MAX_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class AggregateView:
    aggregate_id: str
    partition: int
    #: The number applied next; None before the aggregate's first event.
    next_expected: int | None
    #: The highest number applied or stepped over; None before the first.
    last_applied: int | None
    #: Buffered numbers that wait to be applied (ascending).
    buffered: tuple[int, ...]
    #: Numbers never received, as inclusive ranges, between the next expected and the highest
    #: buffered (a number parked in the DLQ was received: it is not missing).
    missing: tuple[tuple[int, int], ...]
    parked_at: int | None
    parked_reason: str | None  # an error class (its event is in the DLQ), or "gap"
    parked_since: float | None
    #: When the oldest buffered event began to wait (gap clock); None if nothing waits.
    gap_open_since: float | None
    gap_age_seconds: float | None
    last_active: float
    #: How long it has waited: parked, or its gap open (``since`` to the view's clock).
    waiting_seconds: float | None = None

    @property
    def status(self) -> str:
        if self.parked_at is not None:
            return PARKED
        if self.buffered:
            return OPEN_GAP
        return "ok"

    @property
    def needs_attention(self) -> bool:
        return self.status != "ok"

    @property
    def since(self) -> float | None:
        """Since when it waits: parked, or its gap open (for sorting, oldest first)."""
        return self.parked_since if self.parked_since is not None else self.gap_open_since

    @property
    def in_dlq(self) -> bool:
        """Parked because its event at ``parked_at`` failed and went to the DLQ."""
        return self.parked_at is not None and self.parked_reason != "gap"

    def waits_for(self) -> str:
        """One line: what would let the aggregate go on."""
        if self.parked_at is not None:
            if self.parked_reason == "gap":
                return f"parked on a gap at {self.parked_at}: resolve it (or produce {ranges_text(self.missing)})"
            more = f"; then missing {ranges_text(self.missing)}" if self.missing else ""
            return f"parked: event {self.parked_at} is in the DLQ ({self.parked_reason}): replay or resolve it{more}"
        if self.missing:
            return f"missing {ranges_text(self.missing)}"
        return "nothing"

    def as_json(self) -> dict[str, Any]:
        return {
            "aggregate_id": self.aggregate_id,
            "partition": self.partition,
            "status": self.status,
            "next_expected": self.next_expected,
            "last_applied": self.last_applied,
            "buffered": list(self.buffered),
            "missing": [list(r) for r in self.missing],
            "parked": None
            if self.parked_at is None
            else {"seq": self.parked_at, "reason": self.parked_reason, "since": self.parked_since},
            "gap_open_since": self.gap_open_since,
            "gap_age_seconds": self.gap_age_seconds,
            "since": self.since,
            "waiting_seconds": self.waiting_seconds,
            "last_active": self.last_active,
            "waits_for": self.waits_for(),
            "command": command(self),
            "resolve": resolve_command(self),
        }


def view(aggregate_id: str, partition: int, agg: Aggregate, now: float) -> AggregateView:
    s = agg.seq
    waiting = sorted(b.seq for b in agg.buffer.items.values() if not b.done)
    used = {b.seq for b in agg.buffer.items.values()}
    since = agg.buffer.oldest_at()
    parked = s.parked
    start = s.next_seq
    if parked is not None and parked.reason != "gap" and parked.seq == start:
        start += 1  # the parked event was received: it waits in the DLQ, it is not missing
    waited_since = parked.since if parked is not None else since
    return AggregateView(
        aggregate_id=aggregate_id,
        partition=partition,
        next_expected=s.next_seq,
        last_applied=None if s.next_seq is None or s.next_seq <= 1 else s.next_seq - 1,
        buffered=tuple(waiting),
        missing=missing_ranges(start, used, waiting[-1] if waiting else None),
        parked_at=None if parked is None else parked.seq,
        parked_reason=None if parked is None else parked.reason,
        parked_since=None if parked is None else parked.since,
        gap_open_since=since,
        gap_age_seconds=None if since is None else max(0.0, now - since),
        last_active=s.last_active,
        waiting_seconds=None if waited_since is None else max(0.0, now - waited_since),
    )


def missing_ranges(next_seq: int | None, present: set[int], highest: int | None) -> tuple[tuple[int, int], ...]:
    """Numbers from ``next_seq`` below ``highest`` that are not ``present``, as inclusive ranges."""
    if next_seq is None or highest is None:
        return ()
    ranges: list[tuple[int, int]] = []
    expected = next_seq  # by the numbers present, not by every number: a gap may be a billion wide
    for n in sorted(p for p in present if next_seq <= p <= highest):
        if n > expected:
            ranges.append((expected, n - 1))
        expected = n + 1
    return tuple(ranges)


def ranges_text(ranges: Sequence[Sequence[int]]) -> str:
    """``[(3, 3), (5, 7)]`` -> ``3, 5-7``."""
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges) or "nothing"


_ranges = ranges_text  # the name the first version used


# --------------------------------------------------------------------------- commands


def resolve_command(v: AggregateView) -> str | None:
    """The ``seqguard aggregates resolve`` that gives up on what the aggregate waits for first:
    the first missing range (its buffered events then apply), or the event parked in the DLQ."""
    if v.in_dlq and v.parked_at is not None:
        skip_to, given_up = v.parked_at + 1, f"event {v.parked_at} (in the DLQ)"
    elif v.missing:
        first, last = v.missing[0]
        skip_to, given_up = last + 1, ranges_text(v.missing[:1])
    else:
        return None
    reason = f"give up on {given_up}"
    return (
        f"seqguard aggregates resolve {shlex.quote(v.aggregate_id)} --skip-to {skip_to} --reason {shlex.quote(reason)}"
    )


def command(v: AggregateView) -> str | None:
    """The command to run first: replay a parked event once its cause is fixed, else resolve
    the gap (or produce the missing events and run nothing)."""
    if v.in_dlq:
        return f"seqguard dlq replay --aggregate {shlex.quote(v.aggregate_id)}"
    return resolve_command(v)


# --------------------------------------------------------------------------- order and pages


def sort_key(since: float | None, aggregate_id: str) -> tuple[float, str]:
    """Oldest first; an aggregate without a time last; ties by ID, so pages are stable."""
    return (math.inf if since is None else since, aggregate_id)


def oldest_first(views: list[AggregateView]) -> list[AggregateView]:
    """Parked and gapped aggregates, the longest waiting first (ties by ID, for stable pages)."""
    return sorted((v for v in views if v.needs_attention), key=lambda v: sort_key(v.since, v.aggregate_id))


def encode_cursor(v: AggregateView) -> str:
    """An opaque cursor: the place of ``v`` in the oldest-first order (URL-safe)."""
    raw = json.dumps([v.since, v.aggregate_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The sort key a cursor stands for; ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        since, aggregate_id = json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise ValueError("not a cursor of this listing") from exc
    if not isinstance(aggregate_id, str) or not (
        since is None or (isinstance(since, int | float) and not isinstance(since, bool))
    ):
        raise ValueError("not a cursor of this listing")
    return sort_key(None if since is None else float(since), aggregate_id)


def parse_limit(text: str | None) -> int:
    """The ``limit`` query parameter: 1 to MAX_PAGE, DEFAULT_PAGE if absent; ValueError otherwise."""
    if text is None or text == "":
        return DEFAULT_PAGE
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(text)


def page(views: list[AggregateView], after: str | None, limit: int) -> tuple[list[AggregateView], str | None]:
    """One page of ``oldest_first(views)`` after the cursor ``after``, and the next page's cursor
    (None on the last page). A cursor, not a page number: an aggregate resolved or parked
    between two requests does not shift the rest, so none is skipped for that."""
    ordered = oldest_first(views)
    if after is not None:
        start = decode_cursor(after)
        ordered = [v for v in ordered if sort_key(v.since, v.aggregate_id) > start]
    chosen = ordered[:limit]
    more = len(ordered) > limit
    return chosen, encode_cursor(chosen[-1]) if more and chosen else None


# --------------------------------------------------------------------------- owners


def owner_of(partition: int, members: Mapping[str, Collection[int]]) -> str | None:
    """The one member (URL) whose active partitions include ``partition``; None if no member
    or several claim it (an assignment in flux: the answer would be a guess)."""
    owners = [url for url, partitions in members.items() if partition in partitions]
    return owners[0] if len(owners) == 1 else None
