"""The chaos test's domain (loaded by the worker processes through SEQGUARD_DOMAINS).

Each aggregate is a small state machine: ``chaos.opened`` (sequence 1), then
``chaos.step`` events, then ``chaos.closed`` (its last sequence). Every applied event is
one once-only Redis transition keyed by the event's idempotency key (workers/effects.py):
the aggregate's history list gets ``"<seq>:<type>"`` exactly once per event, whatever Kafka
redelivers, and its state hash ends at ``closed``. So the test reads, per aggregate, what
was applied, in which order, and whether anything was applied twice.

An event whose data holds ``"fail_first": true`` fails its first handler attempt with a
transient error and succeeds on the retry (``Context.attempt``): the worker must retry in
place, never dead-letter it. Which events failed so is recorded in a Redis set, so the test
can check that the fault injection happened.
"""

from __future__ import annotations

from typing import Any

from workers.domains.machine import NEW
from workers.effects import Outcome
from workers.envelope import Envelope
from workers.errors import InvalidTransition
from workers.handlers import Context, Registry

DOMAIN = "chaos"
OPENED, STEP, CLOSED = "chaos.opened", "chaos.step", "chaos.closed"
#: type -> (allowed previous states, next state)
TRANSITIONS = {
    OPENED: ({NEW}, "open"),
    STEP: ({"open"}, "open"),
    CLOSED: ({"open"}, "closed"),
}
#: Redis keys (after the deployment's prefix).
FAILED_FIRST = "chaos:failed-first"  # set: ids of events whose first attempt failed
ABSORBED = "chaos:absorbed"  # counter: handler runs whose effect was done already (redeliveries)

registry = Registry()


def label(seq: int | None, event_type: str) -> str:
    return f"{seq}:{event_type}"


def _handler(event_type: str, allowed: set[str], to: str) -> Any:
    async def handle(event: Envelope, data: Any, ctx: Context) -> None:
        effects = ctx.effects
        if isinstance(data, dict) and data.get("fail_first") and ctx.attempt == 1:
            await effects.redis.sadd(effects.prefix + FAILED_FIRST, event.id)
            raise ConnectionError(f"simulated transient failure of {event.id} (attempt {ctx.attempt})")
        result = await effects.transition(
            DOMAIN, event.aggregate_id, event.idempotency_key, label(event.sequence, event_type), allowed, to
        )
        if result.outcome is Outcome.DUPLICATE:
            await effects.redis.incr(effects.prefix + ABSORBED)
        elif result.outcome is Outcome.INVALID:
            raise InvalidTransition(f"{event_type} in state {result.previous or 'new'!r} (allowed: {sorted(allowed)})")

    handle.__name__ = f"on_{event_type.replace('.', '_')}"
    return handle


for _type, (_allowed, _to) in TRANSITIONS.items():
    registry.handler(_type)(_handler(_type, _allowed, _to))
