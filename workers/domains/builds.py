"""The build lifecycle from the runbook: build.start, build.progress, build.complete, service.create.

``build.complete`` before ``build.progress`` is the incident: it is an invalid transition.
``service.create`` creates exactly one service per build, through the effect ledger.
"""

from __future__ import annotations

from typing import Any

from workers.domains.machine import NEW, state_machine
from workers.envelope import Envelope
from workers.handlers import Context, Registry

DOMAIN = "build"
SERVICES_OUTBOX = "services"
SERVICE_EFFECT = "build.service"

registry = Registry()


async def create_service(event: Envelope, data: Any, ctx: Context, state: str) -> None:
    if state == "service_created":
        service = {"build": event.aggregate_id, "event": event.id}
        # Keyed by the build, not the event: one service per build, whichever event asks.
        await ctx.once(
            SERVICE_EFFECT,
            lambda: ctx.effects.push(SERVICES_OUTBOX, service),
            key=event.aggregate_id,
            payload=event.aggregate_id,
        )


state_machine(
    registry,
    DOMAIN,
    {
        "build.start": ({NEW}, "started"),
        "build.progress": ({"started", "in_progress"}, "in_progress"),
        "build.complete": ({"in_progress"}, "complete"),
        "service.create": ({"complete"}, "service_created"),
    },
    after=create_service,
)
