"""Build the PolicyBook from settings and the optional policy file (TOML or JSON).

    # policies.toml
    [types."order.paid"]
    ordering = "strict"          # unordered | warn | ordered | strict
    gap_timeout = "10s"          # seconds, or a duration: "10s", "5m", "1h"
    gap_policy = "park"          # skip | park (strict always parks)
    auto_replay = ["timeout_exceeded"]
    ledger_outage = "fail_open"  # effects of this type run unguarded while the ledger is down

    [effects."order.confirmation_email"]
    outage = "fail_closed"       # per effect: wins over its event type's ledger_outage

Types the file does not name get the SEQGUARD_DEFAULT_ORDERING / SEQGUARD_GAP_* /
SEQGUARD_LEDGER_OUTAGE defaults.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tables.policy import GapPolicy, LedgerOutage, Ordering, Policy, PolicyBook
from workers.errors import ERROR_CLASSES
from workers.settings import Settings
from workers.settings_types import Duration


class TypePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ordering: Ordering | None = None
    gap_timeout: Duration | None = Field(None, gt=0)  # seconds, or 30s, 5m, 24h
    gap_policy: GapPolicy | None = None
    auto_replay: list[str] | None = None
    ledger_outage: LedgerOutage | None = None


class EffectPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outage: LedgerOutage


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    types: dict[str, TypePolicy] = Field(default_factory=dict)
    effects: dict[str, EffectPolicy] = Field(default_factory=dict)


def _policy(
    ordering: Ordering,
    gap_timeout: float,
    gap_policy: GapPolicy,
    auto_replay: frozenset[str],
    ledger_outage: LedgerOutage,
) -> Policy:
    unknown = auto_replay - set(ERROR_CLASSES)
    if unknown:
        raise ValueError(f"auto_replay names unknown error classes: {sorted(unknown)}")
    # strict: no event may be skipped without an operator, so gaps always park.
    return Policy(ordering, gap_timeout, "park" if ordering == "strict" else gap_policy, auto_replay, ledger_outage)


def read_policy_file(path: Path) -> PolicyFile:
    text = path.read_text()
    raw: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    return PolicyFile.model_validate(raw)


def policy_book(settings: Settings) -> PolicyBook:
    auto = settings.auto_replay_classes
    default = _policy(
        settings.default_ordering, settings.gap_timeout, settings.gap_policy, auto, settings.ledger_outage
    )
    by_type: dict[str, Policy] = {}
    effects: dict[str, LedgerOutage] = {}
    if settings.policy_file is not None:
        file = read_policy_file(settings.policy_file)
        for event_type, tp in file.types.items():
            by_type[event_type] = _policy(
                tp.ordering or default.ordering,
                tp.gap_timeout or default.gap_timeout,
                tp.gap_policy or settings.gap_policy,
                frozenset(tp.auto_replay) if tp.auto_replay is not None else auto,
                tp.ledger_outage or default.ledger_outage,
            )
        effects = {name: ep.outage for name, ep in file.effects.items()}
    return PolicyBook(default, by_type, settings.start_policy, effects)
