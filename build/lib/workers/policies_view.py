"""What `seqguard policies` prints: the replay strategy per event type."""

from __future__ import annotations

from typing import Any

from workers.handlers import load_domains
from workers.policy_file import policy_book
from workers.settings import Settings


def policy_rows(settings: Settings) -> list[dict[str, Any]]:
    book = policy_book(settings)
    registry = load_domains(settings.domains)
    types = sorted(set(book.by_type) | set(registry.specs)) + ["(default)"]
    rows = []
    for event_type in types:
        policy = book.default if event_type == "(default)" else book.for_type(event_type)
        spec = registry.get(event_type)
        rows.append(
            {
                "type": event_type,
                "ordering": policy.ordering,
                "gap_timeout": policy.gap_timeout,
                "gap_policy": policy.gap_policy,
                "attempts": settings.handler_attempts,
                "timeout": (spec.timeout if spec and spec.timeout else settings.handler_timeout),
                "handler": f"{spec.fn.__module__}.{spec.fn.__name__} v{spec.version}" if spec else "-",
                "auto_replay": ",".join(sorted(policy.auto_replay)) or "report only",
            }
        )
    return rows
