"""A test domain: the build lifecycle whose build.progress fails while a Redis flag is set,
and a `test.slow` type whose handler outlives its time limit. Loaded by the worker
process through SEQGUARD_DOMAINS."""

from __future__ import annotations

import asyncio
from typing import Any

from workers.domains.machine import state_machine, transition_handler
from workers.envelope import Envelope
from workers.handlers import Context, Registry

registry = Registry()

state_machine(
    registry,
    "build",
    {
        "build.start": ({""}, "started"),
        "build.complete": ({"in_progress"}, "complete"),
        "service.create": ({"complete"}, "service_created"),
    },
)
_progress = transition_handler("build", "build.progress", {"started", "in_progress"}, "in_progress")


def fail_flag(prefix: str, aggregate: str) -> str:
    return f"{prefix}fail:{aggregate}"


@registry.handler("build.progress")
async def flaky_progress(event: Envelope, data: Any, ctx: Context) -> None:
    if await ctx.effects.redis.exists(fail_flag(ctx.effects.prefix, event.aggregate_id)):
        # A business failure (the build service answers, and refuses): retried, then dead-lettered.
        # A ConnectionError here would be an outage instead: the event would wait, never dead-lettered.
        raise RuntimeError(f"simulated refusal by the build service (attempt {ctx.attempt})")
    await _progress(event, data, ctx)


@registry.handler("test.slow", timeout=0.2)
async def slow(event: Envelope, data: Any, ctx: Context) -> None:
    await asyncio.sleep(5)
