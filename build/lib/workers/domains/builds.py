"""The build lifecycle from the runbook: build.start, build.progress, build.complete, service.create.

``build.complete`` before ``build.progress`` is the incident: it is an invalid transition.
"""

from __future__ import annotations

from workers.domains.machine import NEW, state_machine
from workers.handlers import Registry

DOMAIN = "build"

registry = Registry()

state_machine(
    registry,
    DOMAIN,
    {
        "build.start": ({NEW}, "started"),
        "build.progress": ({"started", "in_progress"}, "in_progress"),
        "build.complete": ({"in_progress"}, "complete"),
        "service.create": ({"complete"}, "service_created"),
    },
)
