"""A domain whose only dependency is the effect ledger (loaded by workers via SEQGUARD_DOMAINS).

``ledger.effect`` appends the event's id to a spool file (SEQGUARD_TEST_SPOOL) through
``ctx.once``: an effect outside Redis and PostgreSQL, as a mail server or an HTTP API is.
A line in the spool is one run of the effect, so the test counts runs per event.
"""

from __future__ import annotations

import os
from typing import Any

from workers.envelope import Envelope
from workers.handlers import Context, Registry

EFFECT = "ledger.append"
TYPE = "ledger.effect"

registry = Registry()


@registry.handler(TYPE)
async def on_effect(event: Envelope, data: Any, ctx: Context) -> None:
    spool = os.environ["SEQGUARD_TEST_SPOOL"]

    async def append() -> None:
        with open(spool, "a") as f:  # noqa: ASYNC230 - one short line, fsynced: the effect itself
            f.write(f"{event.id}\n")
            f.flush()
            os.fsync(f.fileno())

    await ctx.once(EFFECT, append)
