"""The effect ledger's decisions (pure): what a claim on an effect's key finds, and what follows.

One entry per effect key (a Redis hash, workers/ledger/redis.py), written only by
compare-and-set on its revision, so of two claimers exactly one wins. Each write gives the
entry a new random revision, never a counter: a counter restarts when an entry is released
or expires, and an owner frozen since then could write over a newer claim (ABA). An entry is

* ``claimed``: ``owner`` runs the effect; the claim holds for ``lease_ms`` from ``at_ms``
  (the store's clock), after which anyone may take it over (its owner died or froze);
* ``done``: the effect ran; later deliveries skip it until the entry's TTL;
* ``failed``: it failed for a business reason; redeliveries do not run it again, a
  replay from the DLQ (an operator's decision) does.

Each entry keeps the fingerprint of the payload it was claimed with: the same key with
another payload is a conflict, flagged rather than skipped (as Stripe's idempotency keys).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

EntryState = Literal["claimed", "done", "failed"]


@dataclass(frozen=True, slots=True)
class Entry:
    state: EntryState
    owner: str
    at_ms: int  # when it was last written, on the store's clock
    lease_ms: int
    fingerprint: str
    rev: str
    error: str = ""

    def lease_left_ms(self, now_ms: int) -> int:
        return self.at_ms + self.lease_ms - now_ms


class Found(enum.Enum):
    CLAIM = "claim"  # write a claim (the key is free, or the claim is already ours)
    TAKE_OVER = "take_over"  # write a claim over one whose lease ran out: the effect may run twice
    DONE = "done"  # skip: it ran before
    FAILED = "failed"  # it failed for good before: the event is dead-lettered again, unrun
    CONFLICT = "conflict"  # the key was used with another payload
    BUSY = "busy"  # another owner runs it now: come back in ``wait_ms``


@dataclass(frozen=True, slots=True)
class Verdict:
    found: Found
    wait_ms: int = 0
    other: str = ""  # the other owner (busy, taken over), or the recorded error (failed)


def on_claim(entry: Entry | None, *, owner: str, fingerprint: str, now_ms: int, replay: bool) -> Verdict:
    """What claiming a key finds. ``replay``: the delivery is a DLQ replay, which may run a
    failed effect again."""
    if entry is None:
        return Verdict(Found.CLAIM)
    if entry.fingerprint != fingerprint:
        return Verdict(Found.CONFLICT, other=entry.fingerprint)
    if entry.state == "done":
        return Verdict(Found.DONE)
    if entry.state == "failed":
        return Verdict(Found.CLAIM) if replay else Verdict(Found.FAILED, other=entry.error)
    if entry.owner == owner:
        return Verdict(Found.CLAIM)  # this process's own claim, whose release did not reach the store
    left = entry.lease_left_ms(now_ms)
    if left > 0:
        return Verdict(Found.BUSY, wait_ms=left, other=entry.owner)
    return Verdict(Found.TAKE_OVER, other=entry.owner)


class Settle(enum.Enum):
    """How an effect that ran ends in the ledger."""

    DONE = "done"  # it ran: mark it done
    RELEASE = "release"  # an outage inside it: free the key for the retry
    FAIL = "failed"  # a business failure: record it, so it is not retried forever


def settle_lost(entry: Entry | None, *, owner: str, how: Settle) -> bool:
    """A settle's compare-and-set failed: True if the claim was taken over while the effect
    ran (its lease ran out), False if the entry already shows this settle (a client retry
    of a write that had reached the store)."""
    if how is Settle.RELEASE:
        return entry is not None and entry.owner != owner
    return entry is None or entry.owner != owner or entry.state != how.value
