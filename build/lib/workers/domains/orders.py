"""The order lifecycle from the incident: created, paid, reserved, shipped, delivered.

Shipping before payment is an invalid transition. ``order.paid`` has two schema versions:
v1 carried ``amount`` in currency units, v2 carries ``amount_cents`` and ``currency``.
Paying sends one "Order confirmed" email, once, whatever Kafka redelivers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from workers.domains.machine import NEW, state_machine, transition_handler
from workers.envelope import Envelope
from workers.handlers import Context, Registry

DOMAIN = "order"
EMAIL_OUTBOX = "emails"

registry = Registry()


class OrderPaid(BaseModel):
    """order.paid, version 2."""

    amount_cents: int = Field(ge=0)
    currency: str = Field(min_length=3, max_length=3)


@registry.upcaster("order.paid", from_version=1)
def paid_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount_cents": round(float(data["amount"]) * 100), "currency": data.get("currency", "USD")}


state_machine(
    registry,
    DOMAIN,
    {
        "order.created": ({NEW}, "created"),
        "order.reserved": ({"paid"}, "reserved"),
        "order.shipped": ({"paid", "reserved"}, "shipped"),
        "order.delivered": ({"shipped"}, "delivered"),
    },
)


_pay = transition_handler(DOMAIN, "order.paid", {"created"}, "paid")


@registry.handler("order.paid", model=OrderPaid, version=2)
async def on_paid(event: Envelope, data: OrderPaid, ctx: Context) -> None:
    await _pay(event, data, ctx)
    await ctx.effects.push_once(
        "order.confirmation_email",
        event.idempotency_key,
        EMAIL_OUTBOX,
        {
            "order": event.aggregate_id,
            "subject": "Order confirmed",
            "amount_cents": data.amount_cents,
            "currency": data.currency,
        },
    )
