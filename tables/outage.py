"""What to do after a handler failed (pure): retry, wait for a dependency, or dead-letter.

A business failure (a typed permanent error, or a handler that keeps failing while its
dependencies answer) is dead-lettered. An infrastructure failure (a typed TransientError,
Redis or PostgreSQL unreachable, or any failure while a dependency does not answer) is not
the event's fault: the event waits where it is, retried with backoff for as long as it takes,
and its attempts are not used up. See workers/processor/runner.py for the binding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Fault(enum.Enum):
    PERMANENT = "permanent"  # retrying cannot help: dead-letter now
    OUTAGE = "outage"  # a dependency is unavailable: wait for it
    ERROR = "error"  # anything else (a bug, a timeout): a few attempts, unless a dependency is down


class Next(enum.Enum):
    RETRY = "retry"  # another attempt, after ``delay``
    WAIT = "wait"  # an outage: try again after ``delay``, the attempt not counted
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Step:
    next: Next
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float
    cap: float

    def delay(self, tries: int) -> float:
        """Exponential: base, 2 base, 4 base... capped (``tries`` counts from 1)."""
        return min(self.cap, self.base * 2.0 ** min(64, max(0, tries - 1)))  # an outage may last 10,000 tries


def after_failure(
    fault: Fault,
    attempt: int,
    attempts: int,
    *,
    dependency_down: bool,
    waits: int,
    retry: Backoff,
    outage: Backoff,
) -> Step:
    """The step after attempt ``attempt`` (of ``attempts``) failed with ``fault``; ``waits``
    counts the outage waits of this event so far (the wait about to start included)."""
    if fault is Fault.PERMANENT:
        return Step(Next.DEAD_LETTER)
    if fault is Fault.OUTAGE or dependency_down:
        return Step(Next.WAIT, outage.delay(waits))
    if attempt < attempts:
        return Step(Next.RETRY, retry.delay(attempt))
    return Step(Next.DEAD_LETTER)
