"""A table-driven state machine whose transitions are once-only effects in Redis."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from workers.effects import Outcome
from workers.envelope import Envelope
from workers.errors import InvalidTransition
from workers.handlers import Context, Registry

NEW = ""  # the state of an aggregate no event has touched
#: Runs after a transition (also after a redelivered one: what it does must be once-only itself).
After = Callable[[Envelope, Any, Context, str], Awaitable[None]]


def state_machine(
    registry: Registry,
    domain: str,
    transitions: dict[str, tuple[set[str], str]],
    models: dict[str, tuple[type[BaseModel], int]] | None = None,
    after: After | None = None,
) -> None:
    """Register one handler per event type: ``type -> (allowed previous states, next state)``.

    An event the current state does not allow raises InvalidTransition (permanent: it
    is dead-lettered with class handler_exception and its aggregate parks).
    """
    models = models or {}
    for event_type, (allowed, to) in transitions.items():
        model, version = models.get(event_type, (None, 1))
        handler = transition_handler(domain, event_type, allowed, to, after)
        registry.handler(event_type, model=model, version=version)(handler)


def transition_handler(domain: str, event_type: str, allowed: set[str], to: str, after: After | None = None) -> Any:
    async def handle(event: Envelope, data: Any, ctx: Context) -> None:
        label = f"{event.sequence}:{event_type}"
        result = await ctx.effects.transition(domain, event.aggregate_id, event.idempotency_key, label, allowed, to)
        if result.outcome is Outcome.INVALID:
            raise InvalidTransition(
                f"{event_type} is not allowed in state {result.previous or 'new'!r} (allowed: {sorted(allowed)})"
            )
        if after is not None:
            await after(event, data, ctx, to)

    handle.__name__ = f"on_{event_type.replace('.', '_')}"
    return handle
