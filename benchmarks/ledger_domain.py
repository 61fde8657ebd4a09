"""The domain module of ``python -m benchmarks.ledger``: one handler, for the benchmark's events.

    SEQGUARD_DOMAINS=benchmarks.ledger_domain BENCH_LEDGER_MODE=once seqguard worker

BENCH_LEDGER_MODE picks what the handler of ``account.updated`` (the events
benchmarks/throughput.py builds) does with each event:

* ``noop``: nothing (the baseline: seqguard's own cost, a handler called);
* ``once``: one effect through the ledger, ``ctx.once`` (a claim and a done mark in Redis);
  the effect itself increments a Python counter, so what is measured is the ledger's cost;
* ``project``: one ``ctx.project``, an INSERT of one row into ``seqguard_bench_rows`` in the
  transaction that records the event's idempotency row (needs SEQGUARD_POSTGRES_URL);
* ``both``: the effect, then the projection.

The rows carry the worker's SEQGUARD_APP_ID (one per benchmark run), so the benchmark can
count what each run wrote.
"""

from __future__ import annotations

import os
from typing import Any

from workers.envelope import Envelope
from workers.handlers import Context, Registry

EVENT_TYPE = "account.updated"
MODE_ENV = "BENCH_LEDGER_MODE"
MODES = ("noop", "once", "project", "both")
EFFECT = "bench.effect"
PROJECTION = "bench.projection"
TABLE = "seqguard_bench_rows"
SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        run text NOT NULL, aggregate_id text NOT NULL, sequence bigint NOT NULL)""",
)
_INSERT = f"INSERT INTO {TABLE} (run, aggregate_id, sequence) VALUES ($1, $2, $3)"  # noqa: S608 - a constant

MODE = os.environ.get(MODE_ENV, "noop")
if MODE not in MODES:
    raise ValueError(f"{MODE_ENV}={MODE!r}: one of {', '.join(MODES)}")
ONCE = MODE in ("once", "both")
PROJECT = MODE in ("project", "both")
RUN = os.environ.get("SEQGUARD_APP_ID", "")

registry = Registry()
registry.schema(*SCHEMA)

#: How many effects ran in this process (the effect's only work).
effects_run = 0


async def _effect() -> None:
    global effects_run
    effects_run += 1


@registry.handler(EVENT_TYPE)
async def on_event(event: Envelope, data: Any, ctx: Context) -> None:
    if ONCE:
        await ctx.once(EFFECT, _effect)
    if PROJECT:

        async def write(conn: Any) -> None:
            await conn.execute(_INSERT, RUN, event.aggregate_id, event.sequence)

        await ctx.project(PROJECTION, write)
