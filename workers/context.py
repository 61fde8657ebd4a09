"""What a handler may use besides its event: once-only effects and exactly-once projections.

    async def on_paid(event, data, ctx):
        await ctx.once("order.confirmation_email", lambda: mailer.send(...))   # the effect ledger
        await ctx.project("orders", lambda conn: conn.execute("INSERT ..."))    # PostgreSQL

``once`` keys an effect by the event's idempotency key (its source and id) plus the effect's
name, and fingerprints the event's data (or ``payload``): the same key with another payload
is dead-lettered as idempotency_conflict instead of skipped. ``project`` runs its function in
a transaction that also records the event, so a projection changes once per event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.dlq.records import REPLAYED_FROM, header
from workers.envelope import Envelope, canonical_data_id

if TYPE_CHECKING:
    from workers.effects import Effects
    from workers.ledger.postgres import Projections
    from workers.ledger.redis import Ledger, OutagePolicy

_DATA = object()  # "fingerprint the event's data"


@dataclass(slots=True)
class Resources:
    """The dependencies handlers reach through their Context (built once per worker)."""

    effects: Effects | None = None
    ledger: Ledger | None = None
    projections: Projections | None = None
    #: (effect, event type) -> the ledger's outage policy (tables.policy.PolicyBook.ledger_outage).
    outage_policy: Callable[[str, str], OutagePolicy] | None = None
    metrics: Any = None


class Context:
    __slots__ = ("attempt", "event", "_headers", "_r")

    def __init__(
        self,
        resources: Resources | None,
        attempt: int = 1,
        event: Envelope | None = None,
        headers: Sequence[tuple[str, bytes | None]] = (),
    ) -> None:
        self._r = resources or Resources()
        self.attempt = attempt
        self.event = event
        self._headers = headers  # the record's: scanned only when the ledger asks for ``replay``

    @property
    def replay(self) -> bool:
        """A DLQ replay: an effect that failed for good may run again."""
        return header(self._headers, REPLAYED_FROM) is not None

    @property
    def effects(self) -> Effects:
        if self._r.effects is None:
            raise RuntimeError("this worker has no Redis effects")
        return self._r.effects

    def _ledger(self, effect: str) -> tuple[Ledger, Envelope, OutagePolicy]:
        """The ledger, this event, and the effect's outage policy."""
        if self._r.ledger is None:
            raise RuntimeError("this worker has no effect ledger (Redis)")
        event = self._event()
        policy = self._r.outage_policy(effect, event.type) if self._r.outage_policy else "fail_closed"
        return self._r.ledger, event, policy

    def _event(self) -> Envelope:
        if self.event is None:
            raise RuntimeError("a Context without an event cannot key an effect")
        return self.event

    async def once(
        self,
        effect: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        key: str | None = None,
        ttl: float | None = None,
        payload: Any = _DATA,
    ) -> bool:
        """Run ``fn`` once per key (default: this event's); True if it ran now, False if it
        had run before."""
        ledger, event, policy = self._ledger(effect)
        return await ledger.once(
            effect,
            fn,
            key=event.idempotency_key if key is None else key,
            fingerprint=canonical_data_id(event.data if payload is _DATA else payload),
            ttl=ttl,
            replay=self.replay,
            outage=policy,
        )

    async def once_each(
        self, effect: str, items: Sequence[tuple[str, Any, Callable[[], Awaitable[Any]]]], *, ttl: float | None = None
    ) -> int:
        """``once`` for many (key, payload, fn): claims and done marks pipelined (two round
        trips for the lot). Returns how many ran now."""
        ledger, _, policy = self._ledger(effect)
        keyed = [(key, canonical_data_id(payload), fn) for key, payload, fn in items]
        return await ledger.once_each(effect, keyed, ttl=ttl, replay=self.replay, outage=policy)

    async def project(self, effect: str, fn: Callable[[Any], Awaitable[Any]], *, key: str | None = None) -> bool:
        """Run ``fn(connection)`` in a PostgreSQL transaction that records (effect, key) too:
        True if it committed now, False if this key was projected before (nothing ran)."""
        projections = self._r.projections
        if projections is None:
            raise RuntimeError("set SEQGUARD_POSTGRES_URL to use projections")
        ran = await projections.once(effect, self._event().idempotency_key if key is None else key, fn)
        if not ran and self._r.metrics is not None:
            self._r.metrics.effects_skipped.labels(effect).inc()
        return ran

    @property
    def has_projections(self) -> bool:
        return self._r.projections is not None
