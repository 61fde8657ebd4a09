"""An operator's resolve (``seqguard aggregates resolve``), applied by the worker that owns the aggregate.

The control event arrives on the control topic (workers/processor/batch.py checks it is one);
``tables.timers.resolve_request`` decides, and this carries the outcome out: an audit record,
dead letters for buffered events the resolve dropped, and a drain of what is now in order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tables import timers
from workers import logs
from workers.dlq.records import Failure
from workers.envelope import Envelope
from workers.errors import ORDER_VIOLATION
from workers.processor.store import Loaded
from workers.records import InRecord

if TYPE_CHECKING:
    from workers.processor.batch import OrderedProcessor


async def resolve(p: OrderedProcessor, loaded: Loaded, env: Envelope, rec: InRecord) -> None:
    """Carry out (or refuse, with an audit record) an operator's resolve of ``loaded``."""
    outcome = timers.resolve_request(loaded.agg, env.data, p.clock(), p.settings.max_sequence)
    key = loaded.key
    request = env.data if isinstance(env.data, dict) else {}
    logs.resolved(rec, env, outcome, request)
    if isinstance(outcome, timers.Refused):
        p.emit.audit("resolve_refused", key, reason=outcome.reason, request=repr(env.data)[:1000])
        return
    gap = outcome.gap
    p.emit.audit(
        "resolved",
        key,
        skip_to=outcome.skip_to,
        was_next=outcome.was_next,
        skipped=None if gap is None else [gap.first, gap.last],
        dropped=[b.seq for b in outcome.dropped],
        reason=str(request.get("reason", ""))[:1000],
        operator=str(request.get("operator", ""))[:200],
    )
    for entry in outcome.dropped:
        assert entry.record is not None
        message = f"dropped by operator resolve --skip-to {outcome.skip_to}"
        failure = Failure(ORDER_VIOLATION, message, 0, key.decode(), entry.seq, entry.type)
        await p.emit.dead_letter(InRecord(*entry.record), failure)
    await p.drain(loaded)
