"""A pure, in-memory carrier of the core's decisions, as workers/processor carries them.

It calls the same entry points as the binding (decide -> carry out the Decision ->
applied/failed -> pop_ready drain; a gap timer calling expire_gap; an operator calling
resolve_request) and decides nothing itself: no I/O, a fake clock (every call takes ``now``).
Handlers succeed unless a test asks an event key to fail a number of times.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tables.policy import Policy, PolicyBook, StartPolicy
from tables.reorder import Buffered
from tables.sequence import Parked
from tables.sequencer import (
    Action,
    Aggregate,
    Decision,
    Gap,
    Incoming,
    Limits,
    Verdict,
    applied,
    decide,
    failed,
    pop_ready,
)
from tables.timers import Refused, Resolved, expire_gap, resolve_request


@dataclass(frozen=True, slots=True)
class Applied:
    """One handler run that succeeded."""

    seq: int | None
    key: str
    type: str
    late: bool = False  # applied as a LATE event (warn policy)


@dataclass
class Driver:
    book: PolicyBook = field(default_factory=PolicyBook)
    limits: Limits = field(default_factory=Limits)
    aggs: dict[str, Aggregate] = field(default_factory=dict)
    #: Aggregate -> handler runs that succeeded, in the order they ran.
    output: dict[str, list[Applied]] = field(default_factory=dict)
    gaps: dict[str, list[Gap]] = field(default_factory=dict)
    parks: dict[str, list[Parked]] = field(default_factory=dict)
    #: Events that went to the DLQ (handler failed), in order: (aggregate, event, reason).
    dlq: list[tuple[str, Incoming, str]] = field(default_factory=list)
    #: LATE events refused (non-warn policies) and OVERFLOW events: (aggregate, event, verdict).
    rejected: list[tuple[str, Incoming, Verdict]] = field(default_factory=list)
    #: Every verdict given: (aggregate, event, verdict).
    verdicts: list[tuple[str, Incoming, Verdict]] = field(default_factory=list)
    #: Event key -> how many more times its handler fails.
    fail_times: dict[str, int] = field(default_factory=dict)
    #: Every decision given: (aggregate, event, decision).
    decisions: list[tuple[str, Incoming, Decision]] = field(default_factory=list)
    #: Resolve requests refused: (aggregate, reason).
    refused: list[tuple[str, str]] = field(default_factory=list)
    max_sequence: int = 2**53

    # --- the binding -------------------------------------------------------

    @property
    def start(self) -> StartPolicy:
        return self.book.start

    @property
    def rules(self) -> Limits:
        """The limits with the book's start policy, as the binding builds them."""
        return replace(self.limits, start=self.book.start)

    def agg(self, agg_id: str) -> Aggregate:
        return self.aggs.setdefault(agg_id, Aggregate())

    def policy(self, event_type: str) -> Policy:
        return self.book.for_type(event_type)

    def deliver(self, agg_id: str, event: Incoming, now: float, *, room: bool = True) -> Verdict:
        agg = self.agg(agg_id)
        policy = self.policy(event.type)
        d = decide(agg, event, policy, now, self.rules, room=room)
        self.verdicts.append((agg_id, event, d.verdict))
        self.decisions.append((agg_id, event, d))
        if d.action is Action.RUN:
            if self._handle(agg_id, event, now, late=d.verdict is Verdict.LATE):
                self.drain(agg_id, now)
        elif d.action is Action.DEAD_LETTER:
            self.rejected.append((agg_id, event, d.verdict))
        elif d.action is Action.DRAIN_AND_RETRY:
            assert d.gap is not None
            self.gaps.setdefault(agg_id, []).append(d.gap)
            self.drain(agg_id, now)
            self.verdicts.pop()
            return self.deliver(agg_id, event, now, room=room)
        return d.verdict

    def drain(self, agg_id: str, now: float) -> None:
        agg = self.agg(agg_id)
        while (b := pop_ready(agg)) is not None:
            self._handle(agg_id, Incoming(b.seq, b.key, b.type, b.record), now)

    def tick(self, now: float) -> None:
        """The gap timer: expire every due gap of every aggregate, draining after each."""
        for agg_id, agg in self.aggs.items():
            while (r := expire_gap(agg, self.policy, now)) is not None:
                if isinstance(r, Gap):
                    self.gaps.setdefault(agg_id, []).append(r)
                else:
                    self.parks.setdefault(agg_id, []).append(r)
                self.drain(agg_id, now)

    def settle(self, now: float, timeout: float) -> float:
        """Run the timer, a timeout apart, until no gap is left to expire (each gap gets its own
        timeout, counted from the progress before it). Returns the last tick's time."""
        for _ in range(10_000):
            before = sum(map(len, self.gaps.values())) + sum(map(len, self.parks.values()))
            self.tick(now)
            if sum(map(len, self.gaps.values())) + sum(map(len, self.parks.values())) == before:
                return now
            now += timeout + 1
        raise AssertionError("gaps kept expiring")

    def replay(self, now: float) -> None:
        """The DLQ agent: re-deliver every dead-lettered event once, oldest first."""
        pending, self.dlq = self.dlq, []
        for agg_id, event, _reason in pending:
            self.deliver(agg_id, event, now)

    def resolve(self, agg_id: str, skip_to: object, now: float) -> tuple[Gap | None, list[Buffered]]:
        outcome = resolve_request(self.agg(agg_id), {"skip_to": skip_to}, now, self.max_sequence)
        if isinstance(outcome, Refused):
            self.refused.append((agg_id, outcome.reason))
            return None, []
        assert isinstance(outcome, Resolved)
        if outcome.gap is not None:
            self.gaps.setdefault(agg_id, []).append(outcome.gap)
        self.drain(agg_id, now)
        return outcome.gap, outcome.dropped

    def _handle(self, agg_id: str, event: Incoming, now: float, *, late: bool = False) -> bool:
        """Run the handler; True if it succeeded (so the caller may drain)."""
        agg = self.agg(agg_id)
        if self.fail_times.get(event.key, 0) > 0:
            self.fail_times[event.key] -= 1
            self.dlq.append((agg_id, event, "Boom"))
            if not failed(agg, event, self.policy(event.type), "Boom", now):
                # Not parked: the sequence stepped over the failed number; release what waits.
                self.drain(agg_id, now)
            return False
        applied(agg, event, now, limits=self.limits)
        self.output.setdefault(agg_id, []).append(Applied(event.seq, event.key, event.type, late))
        return True

    # --- reading the results -----------------------------------------------

    def seqs(self, agg_id: str) -> list[int | None]:
        return [a.seq for a in self.output.get(agg_id, [])]

    def keys(self, agg_id: str) -> list[str]:
        return [a.key for a in self.output.get(agg_id, [])]

    def verdicts_of(self, agg_id: str) -> list[Verdict]:
        return [v for a, _e, v in self.verdicts if a == agg_id]


def ev(seq: int | None, type_: str = "order.event", key: str | None = None) -> Incoming:
    """An event whose key is derived from its number unless given."""
    return Incoming(seq, key if key is not None else f"id-{seq}", type_)


def runs(numbers: set[int] | frozenset[int]) -> list[Gap]:
    """Consecutive runs of ``numbers`` as Gaps, lowest first."""
    out: list[Gap] = []
    for n in sorted(numbers):
        if out and out[-1].last == n - 1:
            out[-1] = Gap(out[-1].first, n)
        else:
            out.append(Gap(n, n))
    return out
