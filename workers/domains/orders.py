"""The order lifecycle from the incident: created, paid, reserved, shipped, delivered.

Shipping before payment is an invalid transition. ``order.paid`` has two schema versions:
v1 carried ``amount`` in currency units, v2 carries ``amount_cents`` and ``currency``.
Paying sends one "Order confirmed" email through the effect ledger (ctx.once), whatever
Kafka redelivers. With SEQGUARD_POSTGRES_URL set, every applied event also updates the
``seqguard_orders`` projection and appends to ``seqguard_order_history``, exactly once
(ctx.project: the rows and the event's idempotency row commit together).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from workers.domains.machine import NEW, state_machine, transition_handler
from workers.envelope import Envelope
from workers.handlers import Context, Registry

DOMAIN = "order"
EMAIL_OUTBOX = "emails"
EMAIL_EFFECT = "order.confirmation_email"
PROJECTION = "order.projection"
#: The projection's tables (created at start-up, workers/ledger/postgres.py). The history has
#: no unique key on purpose: a row written twice would show.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS seqguard_orders (
        order_id text PRIMARY KEY, state text NOT NULL, amount_cents bigint, currency text,
        last_sequence bigint, events integer NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS seqguard_order_history (
        order_id text NOT NULL, sequence bigint, type text NOT NULL, state text NOT NULL)""",
)

registry = Registry()
registry.schema(*SCHEMA)


class OrderPaid(BaseModel):
    """order.paid, version 2."""

    amount_cents: int = Field(ge=0)
    currency: str = Field(min_length=3, max_length=3)


@registry.upcaster("order.paid", from_version=1)
def paid_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount_cents": round(float(data["amount"]) * 100), "currency": data.get("currency", "USD")}


async def project(event: Envelope, data: Any, ctx: Context, state: str) -> None:
    """The order's row and one history row per applied event, once (a no-op without PostgreSQL)."""
    if not ctx.has_projections:
        return
    amount = data.amount_cents if isinstance(data, OrderPaid) else None
    currency = data.currency if isinstance(data, OrderPaid) else None

    async def write(conn: Any) -> None:
        await conn.execute(
            """INSERT INTO seqguard_orders AS o (order_id, state, amount_cents, currency, last_sequence, events)
               VALUES ($1, $2, $3, $4, $5, 1)
               ON CONFLICT (order_id) DO UPDATE SET state = $2, last_sequence = $5, events = o.events + 1,
                 amount_cents = coalesce($3, o.amount_cents), currency = coalesce($4, o.currency)""",
            event.aggregate_id,
            state,
            amount,
            currency,
            event.sequence,
        )
        await conn.execute(
            "INSERT INTO seqguard_order_history (order_id, sequence, type, state) VALUES ($1, $2, $3, $4)",
            event.aggregate_id,
            event.sequence,
            event.type,
            state,
        )

    await ctx.project(PROJECTION, write)


state_machine(
    registry,
    DOMAIN,
    {
        "order.created": ({NEW}, "created"),
        "order.reserved": ({"paid"}, "reserved"),
        "order.shipped": ({"paid", "reserved"}, "shipped"),
        "order.delivered": ({"shipped"}, "delivered"),
    },
    after=project,
)


_pay = transition_handler(DOMAIN, "order.paid", {"created"}, "paid", after=project)


@registry.handler("order.paid", model=OrderPaid, version=2)
async def on_paid(event: Envelope, data: OrderPaid, ctx: Context) -> None:
    await _pay(event, data, ctx)
    email = {
        "order": event.aggregate_id,
        "subject": "Order confirmed",
        "amount_cents": data.amount_cents,
        "currency": data.currency,
    }
    await ctx.once(EMAIL_EFFECT, lambda: ctx.effects.push(EMAIL_OUTBOX, email))
