"""A domain with all three kinds of once-only effect (loaded by workers via SEQGUARD_DOMAINS).

Every ``fx.step`` event of an aggregate (sequence 1..n, ``data.amount``):

* moves a Redis state machine once (an atomic script: exactly once, workers/effects.py);
* appends ``"<event id> <pid>"`` to a spool file (SEQGUARD_TEST_SPOOL) through the effect
  ledger (ctx.once): an effect outside Redis and PostgreSQL, as a mail server is; a line
  is one run, and the pid says which worker process ran it;
* projects into PostgreSQL (ctx.project): ``fx_totals`` (one row per aggregate) and
  ``fx_history`` (one row per event, no unique key: a row written twice shows).

``data.fail_once``: the handler fails for good after its effects, unless the delivery is a
DLQ replay: the event is dead-lettered, and a replay must not run its effects again.
``data.slow``: the spool effect answers that many seconds after its line is written (a
window for SIGKILLs between an effect and its done mark).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from workers.domains.machine import NEW
from workers.effects import Outcome
from workers.envelope import Envelope
from workers.errors import InvalidTransition, PermanentError
from workers.handlers import Context, Registry

TYPE = "fx.step"
SPOOL_EFFECT = "fx.spool"
PROJECTION = "fx.projection"

registry = Registry()
registry.schema(
    "CREATE TABLE IF NOT EXISTS fx_totals (agg text PRIMARY KEY, total bigint NOT NULL, events int NOT NULL,"
    " last_sequence bigint NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fx_history (agg text NOT NULL, sequence bigint NOT NULL, amount bigint NOT NULL)",
)


@registry.handler(TYPE)
async def on_step(event: Envelope, data: Any, ctx: Context) -> None:
    data = data if isinstance(data, dict) else {}
    amount = int(data.get("amount", 0))
    allowed = {NEW} if event.sequence == 1 else {"open"}
    label = f"{event.sequence}:{TYPE}"
    result = await ctx.effects.transition("fx", event.aggregate_id, event.idempotency_key, label, allowed, "open")
    if result.outcome is Outcome.INVALID:
        raise InvalidTransition(f"{TYPE} {event.sequence} in state {result.previous!r}")

    async def spool() -> None:
        with open(os.environ["SEQGUARD_TEST_SPOOL"], "a") as f:  # noqa: ASYNC230 - one short line: the effect
            f.write(f"{event.id} {os.getpid()}\n")
            f.flush()
            os.fsync(f.fileno())
        if data.get("slow"):  # as an API whose effect lands before its answer does
            await asyncio.sleep(float(data["slow"]))

    await ctx.once(SPOOL_EFFECT, spool)

    async def project(conn: Any) -> None:
        await conn.execute(
            "INSERT INTO fx_totals AS t (agg, total, events, last_sequence) VALUES ($1, $2, 1, $3)"
            " ON CONFLICT (agg) DO UPDATE SET total = t.total + $2, events = t.events + 1, last_sequence = $3",
            event.aggregate_id,
            amount,
            event.sequence,
        )
        await conn.execute(
            "INSERT INTO fx_history (agg, sequence, amount) VALUES ($1, $2, $3)",
            event.aggregate_id,
            event.sequence,
            amount,
        )

    await ctx.project(PROJECTION, project)
    if data.get("fail_once") and not ctx.replay:
        raise PermanentError(f"{event.id}: refused after its effects (replay it)")
