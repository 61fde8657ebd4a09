"""Ordering policies per event type (pure data, no I/O).

A policy book maps an event type to how seqguard orders it. Defaults come from
settings; a policy file overrides them per type (see workers/policy_file.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Ordering = Literal["ordered", "strict", "warn", "unordered"]
GapPolicy = Literal["skip", "park"]
StartPolicy = Literal["from_one", "from_first_seen"]
OverflowPolicy = Literal["dead_letter", "skip_gap"]
#: When the effect ledger is unreachable: wait for it, or run effects unguarded.
LedgerOutage = Literal["fail_closed", "fail_open"]

#: Orderings whose dead-lettered events park their aggregate.
PARKING_ORDERINGS: frozenset[str] = frozenset({"ordered", "strict"})


@dataclass(frozen=True, slots=True)
class Policy:
    """How events of one type are ordered, and what happens on gaps."""

    ordering: Ordering = "ordered"
    gap_timeout: float = 30.0
    gap_policy: GapPolicy = "skip"
    #: Error classes whose dead-lettered records the DLQ agent replays by itself.
    auto_replay: frozenset[str] = frozenset()
    ledger_outage: LedgerOutage = "fail_closed"

    @property
    def parks_on_failure(self) -> bool:
        return self.ordering in PARKING_ORDERINGS


@dataclass(frozen=True, slots=True)
class PolicyBook:
    """Event type -> Policy, with a default for types the book does not name."""

    default: Policy = Policy()
    by_type: dict[str, Policy] = field(default_factory=dict)
    start: StartPolicy = "from_one"
    #: Ledger outage policy by effect name: overrides the event type's.
    effects: dict[str, LedgerOutage] = field(default_factory=dict)

    def for_type(self, event_type: str) -> Policy:
        return self.by_type.get(event_type, self.default)

    def ledger_outage(self, effect: str, event_type: str) -> LedgerOutage:
        return self.effects.get(effect) or self.for_type(event_type).ledger_outage
