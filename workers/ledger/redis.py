"""The effect ledger on Redis: an effect outside Redis runs once per key, whatever Kafka redelivers.

    sent = await ledger.once("order.confirmation_email", send, key=..., fingerprint=...)

The key is claimed before the effect (a compare-and-set on the entry's revision, with a
lease), and marked done after it. The decisions are tables.ledger's; this module only reads
and writes entries. What cannot be promised: an owner that dies (or freezes) after its
effect and before the done mark leaves a claim that expires after its lease, and the next
delivery runs the effect again. Such take-overs are counted
(``seqguard_ledger_claims_expired_total``). Effects whose result lives in Redis or in
PostgreSQL can be exactly-once instead: an atomic script, or workers/ledger/postgres.py.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis import exceptions as rx
from redis.asyncio import Redis

from tables import ledger as core
from tables.ledger import Entry, Found, Settle
from workers.errors import DependencyDown, IdempotencyConflict, PermanentError, SeqguardError, TransientError

log = logging.getLogger(__name__)

OutagePolicy = Literal["fail_closed", "fail_open"]

# Compare-and-set of one entry. KEYS[1]: the entry. ARGV[1]: the revision expected ("": absent;
# "?": read only), ARGV[2]: the new revision (random), ARGV[3]: TTL in ms (0: delete the entry),
# ARGV[4..]: field, value pairs. Returns {1, now, new revision} or {0, now, the entry's fields}.
# The entry's clock is Redis's.
_CAS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rev = redis.call('HGET', KEYS[1], 'rev') or ''
if rev ~= ARGV[1] then return {0, now, redis.call('HGETALL', KEYS[1])} end
redis.call('DEL', KEYS[1])
if tonumber(ARGV[3]) == 0 then return {1, now, ''} end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'at', now, unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, now, ARGV[2]}
"""

#: What redis-py raises when the server is unreachable, hung, loading or failing over.
REDIS_OUTAGES: tuple[type[BaseException], ...] = (
    rx.ConnectionError,  # refused, reset, BusyLoadingError, MaxConnectionsError
    rx.TimeoutError,
    rx.ReadOnlyError,  # a replica that was the primary: a failover in progress
    rx.ClusterDownError,
    rx.TryAgainError,
    rx.MasterDownError,
    ConnectionError,
    TimeoutError,
)


def is_redis_outage(exc: BaseException) -> bool:
    return isinstance(exc, REDIS_OUTAGES)


class EffectBusy(TransientError):
    """Another owner holds the effect's claim: the event waits (at most the claim's lease)."""

    def __init__(self, effect: str, owner: str, wait_ms: int) -> None:
        super().__init__(f"effect {effect} is being run by {owner} (claim holds {wait_ms} ms more)", "ledger")
        self.retry_after = wait_ms / 1000.0


@dataclass(frozen=True, slots=True)
class _Ran:
    """An effect that ran here whose done mark has not reached Redis yet."""

    rev: str
    fingerprint: str


class Ledger:
    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        owner: str,
        ttl: float,
        lease: float,
        metrics: Any = None,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.owner = owner
        self.ttl_ms = int(ttl * 1000)
        self.lease_ms = int(lease * 1000)
        self.metrics = metrics
        self._cas = redis.register_script(_CAS)
        self._unmarked: dict[str, _Ran] = {}

    def key(self, effect: str, key: str) -> str:
        """One Redis Cluster slot per event: the hash tag is the event's key."""
        return f"{self.namespace}ledger:{{{key}}}:{effect}"

    async def entry(self, effect: str, key: str) -> Entry | None:
        _, _, found = await self._write(self.key(effect, key), "?", 0)
        return _entry(found)

    async def once(
        self,
        effect: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        key: str,
        fingerprint: str,
        ttl: float | None = None,
        replay: bool = False,
        outage: OutagePolicy = "fail_closed",
    ) -> bool:
        """Run ``fn`` unless the key is done; True if it ran now. Raises EffectBusy (another
        owner runs it), IdempotencyConflict, PermanentError (it failed for good before), and
        DependencyDown when Redis does not answer under ``fail_closed``."""
        rkey = self.key(effect, key)
        ttl_ms = self.ttl_ms if ttl is None else int(ttl * 1000)
        ran = self._unmarked.get(rkey)
        if ran is not None:  # it ran here, and an outage kept its done mark from Redis: never again
            await self._mark_done(effect, rkey, ran.rev, ttl_ms, ran.fingerprint, outage)
            self._count("effects_skipped", effect)
            return False
        try:
            rev = await self._claim(effect, rkey, fingerprint, ttl_ms, replay)
        except REDIS_OUTAGES as exc:
            if outage == "fail_closed":
                raise DependencyDown(f"the effect ledger is unreachable: {exc!r}", "redis") from exc
            log.error("effect ledger unreachable (%r): FAIL-OPEN, %s runs unguarded for %s", exc, effect, key)
            self._count("ledger_fail_open", effect)
            await fn()
            return True
        if rev is None:
            self._count("effects_skipped", effect)
            return False
        await self._run(effect, rkey, rev, fn, ttl_ms, fingerprint)
        self._unmarked[rkey] = _Ran(rev, fingerprint)
        await self._mark_done(effect, rkey, rev, ttl_ms, fingerprint, outage)
        return True

    async def once_each(
        self,
        effect: str,
        items: Sequence[tuple[str, str, Callable[[], Awaitable[Any]]]],
        *,
        ttl: float | None = None,
        replay: bool = False,
        outage: OutagePolicy = "fail_closed",
    ) -> int:
        """``once`` for many (key, fingerprint, fn) at a time, e.g. one notification per
        subscriber: the claims of new keys go in one pipeline, and so do the done marks, so
        the lot costs two round trips instead of two per effect. Keys done before are skipped
        from the claim's reply; other keys seen before go through ``once`` one by one.
        Returns how many ran now."""
        ttl_ms = self.ttl_ms if ttl is None else int(ttl * 1000)
        rkeys = [self.key(effect, key) for key, _, _ in items]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for rkey, (_, fingerprint, _) in zip(rkeys, items, strict=True):
                    args = ["", _new_rev(), ttl_ms, *self._claim_fields(fingerprint)]
                    await self._cas(keys=[rkey], args=args, client=pipe)
                replies = await pipe.execute()
        except REDIS_OUTAGES:
            replies = [(0, 0, None)] * len(items)  # each one by one, under the outage policy
        ran = 0
        marks: list[tuple[str, _Ran]] = []  # (key, what ran): a key listed twice may be marked by once() already
        for rkey, (key, fingerprint, fn), (ok, now, found) in zip(rkeys, items, replies, strict=True):
            if ok:
                await self._run(effect, rkey, _text(found), fn, ttl_ms, fingerprint)
                self._unmarked[rkey] = done = _Ran(_text(found), fingerprint)
                marks.append((rkey, done))
                ran += 1
            elif rkey not in self._unmarked and self._done(_entry(found), fingerprint, int(now), replay):
                self._count("effects_skipped", effect)  # a redelivered batch: no second round trip
            else:
                ran += await self.once(
                    effect, fn, key=key, fingerprint=fingerprint, ttl=ttl, replay=replay, outage=outage
                )
        await self._mark_all_done(effect, marks, ttl_ms, outage)
        return ran

    async def _mark_all_done(
        self, effect: str, marks: list[tuple[str, _Ran]], ttl_ms: int, outage: OutagePolicy
    ) -> None:
        """The done marks of ``once_each``, in one pipeline."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for rkey, done in marks:
                    fields = self._settle_fields(Settle.DONE, done.fingerprint)
                    await self._cas(keys=[rkey], args=[done.rev, _new_rev(), ttl_ms, *fields], client=pipe)
                settled = await pipe.execute()
        except REDIS_OUTAGES:
            for rkey, done in marks:  # as once() does: fail_closed waits, fail_open lets go
                await self._mark_done(effect, rkey, done.rev, ttl_ms, done.fingerprint, outage)
            return
        for (rkey, _), (ok, _, found) in zip(marks, settled, strict=True):
            self._unmarked.pop(rkey, None)
            if not ok and core.settle_lost(_entry(found), owner=self.owner, how=Settle.DONE):
                self._count("ledger_claims_lost", effect)

    def _done(self, entry: Entry | None, fingerprint: str, now_ms: int, replay: bool) -> bool:
        verdict = core.on_claim(entry, owner=self.owner, fingerprint=fingerprint, now_ms=now_ms, replay=replay)
        return verdict.found is Found.DONE

    def _claim_fields(self, fingerprint: str) -> tuple[Any, ...]:
        return ("state", "claimed", "owner", self.owner, "lease", self.lease_ms, "fp", fingerprint)

    def _settle_fields(self, how: Settle, fingerprint: str, error: str = "") -> tuple[Any, ...]:
        return ("state", how.value, "owner", self.owner, "lease", 0, "fp", fingerprint, "error", error[:500])

    async def _run(
        self, effect: str, rkey: str, rev: str, fn: Callable[[], Awaitable[Any]], ttl_ms: int, fingerprint: str
    ) -> None:
        try:
            await fn()
        except Exception as exc:
            permanent = isinstance(exc, SeqguardError) and exc.permanent
            how = Settle.FAIL if permanent else Settle.RELEASE
            try:
                await self._settle(effect, rkey, rev, how, ttl_ms, fingerprint, f"{type(exc).__name__}: {exc}")
            except REDIS_OUTAGES:
                log.warning("effect %s failed; Redis is unreachable: its claim on %s holds for its lease", effect, rkey)
            raise
        # (A cancellation leaves the claim as it is: it is this process's, so its retry reclaims it.)
        self._count("effects_run", effect)

    async def _mark_done(
        self, effect: str, rkey: str, rev: str, ttl_ms: int, fingerprint: str, outage: OutagePolicy
    ) -> None:
        """Mark an effect that ran done. While Redis is down, fail_closed waits (the event is
        retried, and this process remembers the effect ran); fail_open goes on, and the claim
        holds for its lease."""
        try:
            await self._settle(effect, rkey, rev, Settle.DONE, ttl_ms, fingerprint)
        except REDIS_OUTAGES as exc:
            if outage == "fail_closed":
                raise DependencyDown(f"effect {effect} ran; its done mark waits for Redis: {exc!r}", "redis") from exc
            self._unmarked.pop(rkey, None)
            log.error("effect %s ran; FAIL-OPEN: its done mark on %s was lost (%r)", effect, rkey, exc)

    async def _claim(self, effect: str, rkey: str, fingerprint: str, ttl_ms: int, replay: bool) -> str | None:
        """The claim's revision, or None if the effect is done."""
        claim = self._claim_fields(fingerprint)
        expected = ""  # optimistic: most keys are new
        for _ in range(8):
            ok, now, found = await self._write(rkey, expected, ttl_ms, *claim)
            if ok:
                return _text(found)
            entry = _entry(found)
            verdict = core.on_claim(entry, owner=self.owner, fingerprint=fingerprint, now_ms=now, replay=replay)
            if verdict.found is Found.DONE:
                return None
            if verdict.found is Found.CONFLICT:
                self._count("ledger_conflicts", effect)
                raise IdempotencyConflict(f"effect {effect}: key {rkey} was used before with another payload")
            if verdict.found is Found.FAILED:
                raise PermanentError(f"effect {effect} failed before for this key ({verdict.other}); replay to retry")
            if verdict.found is Found.BUSY:
                raise EffectBusy(effect, verdict.other, verdict.wait_ms)
            if verdict.found is Found.TAKE_OVER:
                self._count("ledger_claims_expired", effect)
                log.warning("effect %s: the claim of %s on %s expired; it runs again", effect, verdict.other, rkey)
            expected = entry.rev if entry is not None else ""
        raise EffectBusy(effect, "others", self.lease_ms)  # contended past reason: wait and try again

    async def _settle(
        self, effect: str, rkey: str, rev: str, how: Settle, ttl_ms: int, fingerprint: str, error: str = ""
    ) -> None:
        if how is Settle.RELEASE:
            ok, _, found = await self._write(rkey, rev, 0)
        else:
            fields = self._settle_fields(how, fingerprint, error)
            ok, _, found = await self._write(rkey, rev, ttl_ms, *fields)
        self._unmarked.pop(rkey, None)
        if not ok and core.settle_lost(_entry(found), owner=self.owner, how=how):
            self._count("ledger_claims_lost", effect)
            log.error("effect %s: the claim on %s was taken over while it ran (its lease ran out)", effect, rkey)

    async def _write(self, rkey: str, expected: str, ttl_ms: int, *fields: Any) -> tuple[bool, int, Any]:
        ok, now, found = await self._cas(keys=[rkey], args=[expected, _new_rev(), ttl_ms, *fields])
        return bool(ok), int(now), found

    def _count(self, name: str, effect: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).labels(effect).inc()


def _entry(flat: Any) -> Entry | None:
    if not flat or not isinstance(flat, list):
        return None
    f = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
    state = f.get("state", "claimed")
    return Entry(
        state if state in ("claimed", "done", "failed") else "claimed",  # type: ignore[arg-type]
        f.get("owner", ""),
        int(f.get("at", 0)),
        int(f.get("lease", 0)),
        f.get("fp", ""),
        f.get("rev", ""),
        f.get("error", ""),
    )


def _new_rev() -> str:
    return secrets.token_hex(8)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
