"""The effect ledger (workers/ledger/redis.py) against a real Redis: once per key across
calls, owners, apps and outages; claims that expire; conflicts and recorded failures.

Each test writes under its own namespace of the session's Redis (``redis_url``); the
outage tests run a PrivateRedis of their own, which they SIGKILL and restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from tests.redis_server import PrivateRedis
from workers.errors import IDEMPOTENCY_CONFLICT, DependencyDown, IdempotencyConflict, PermanentError, TransientError
from workers.ledger.redis import EffectBusy, Ledger
from workers.metrics import Metrics

EFFECT = "order.confirmation_email"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def ns() -> str:
    return f"test-ledger-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics.create()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    yield server
    server.destroy()


def ledger(redis: Redis, ns: str, metrics: Metrics | None = None, *, owner: str = "w1", lease: float = 60.0) -> Ledger:
    return Ledger(redis, namespace=ns, owner=owner, ttl=120.0, lease=lease, metrics=metrics)


def count(metrics: Metrics, name: str, effect: str = EFFECT) -> float:
    return metrics.registry.get_sample_value(f"seqguard_{name}_total", {"effect": effect}) or 0.0


class Effect:
    """An effect that counts its runs (optionally sleeping, or raising, each time)."""

    def __init__(self, *, sleep: float = 0.0, raises: BaseException | None = None) -> None:
        self.runs = 0
        self.sleep = sleep
        self.raises = raises

    async def __call__(self) -> None:
        self.runs += 1
        if self.sleep:
            await asyncio.sleep(self.sleep)
        if self.raises is not None:
            raise self.raises


# --- once ------------------------------------------------------------------------------


@pytest.mark.parametrize("calls", [1, 2, 5])
async def test_once_runs_the_effect_once_however_often_it_is_called(
    redis: Redis, ns: str, metrics: Metrics, calls: int
) -> None:
    led, fn = ledger(redis, ns, metrics), Effect()
    results = [await led.once(EFFECT, fn, key="order-1", fingerprint="fp") for _ in range(calls)]
    assert results == [True] + [False] * (calls - 1)
    assert fn.runs == 1
    assert count(metrics, "effects_run") == 1
    assert count(metrics, "effects_skipped") == calls - 1
    entry = await led.entry(EFFECT, "order-1")
    assert entry is not None and (entry.state, entry.owner, entry.fingerprint) == ("done", "w1", "fp")


async def test_20_owners_at_once_run_the_effect_once(redis: Redis, ns: str, metrics: Metrics) -> None:
    fn = Effect(sleep=0.05)
    owners = [ledger(redis, ns, metrics, owner=f"w{i}") for i in range(20)]
    results = await asyncio.gather(
        *(led.once(EFFECT, fn, key="order-1", fingerprint="fp") for led in owners), return_exceptions=True
    )
    assert fn.runs == 1
    assert results.count(True) == 1
    others = [r for r in results if r is not True]
    assert all(r is False or isinstance(r, EffectBusy) for r in others), others
    for busy in (r for r in others if isinstance(r, EffectBusy)):
        assert 0 < busy.retry_after <= 60.0
    # Whoever comes next finds it done.
    assert await owners[7].once(EFFECT, fn, key="order-1", fingerprint="fp") is False
    assert fn.runs == 1


async def test_a_dead_owners_claim_blocks_until_its_lease_runs_out_then_is_taken_over(
    redis: Redis, ns: str, metrics: Metrics
) -> None:
    dead, live = ledger(redis, ns, owner="dead", lease=0.5), ledger(redis, ns, metrics, owner="live", lease=0.5)
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    claimed_at = time.monotonic()
    task = asyncio.create_task(dead.once(EFFECT, hangs, key="order-1", fingerprint="fp"))
    await started.wait()
    task.cancel()  # the owner dies after its claim, before any settle
    with pytest.raises(asyncio.CancelledError):
        await task
    entry = await live.entry(EFFECT, "order-1")
    assert entry is not None and (entry.state, entry.owner) == ("claimed", "dead")

    fn = Effect()
    busy = 0
    while True:
        try:
            ran = await live.once(EFFECT, fn, key="order-1", fingerprint="fp")
            break
        except EffectBusy as exc:
            busy += 1
            assert 0 < exc.retry_after <= 0.5
            assert fn.runs == 0
            await asyncio.sleep(min(exc.retry_after, 0.1))
    took_over_after = time.monotonic() - claimed_at

    assert ran is True and fn.runs == 1
    assert busy >= 1
    assert took_over_after >= 0.45  # not before the lease ran out (Redis's clock, give or take)
    assert count(metrics, "ledger_claims_expired") == 1
    entry = await live.entry(EFFECT, "order-1")
    assert entry is not None and (entry.state, entry.owner) == ("done", "live")


@pytest.mark.parametrize("first_state", ["done", "claimed"])
async def test_the_same_key_with_another_payload_is_a_conflict(
    redis: Redis, ns: str, metrics: Metrics, first_state: str
) -> None:
    first, second = ledger(redis, ns, metrics, owner="w1"), ledger(redis, ns, metrics, owner="w2")
    fn = Effect()
    if first_state == "done":
        assert await first.once(EFFECT, fn, key="order-1", fingerprint="fp-a") is True
    else:
        running, finish = asyncio.Event(), asyncio.Event()

        async def running_now() -> None:
            running.set()
            await finish.wait()

        task = asyncio.create_task(first.once(EFFECT, running_now, key="order-1", fingerprint="fp-a"))
        await running.wait()  # w1 holds the claim
    runs = fn.runs

    with pytest.raises(IdempotencyConflict) as raised:
        await second.once(EFFECT, fn, key="order-1", fingerprint="fp-b")

    assert raised.value.error_class == IDEMPOTENCY_CONFLICT and raised.value.permanent
    assert fn.runs == runs
    assert count(metrics, "ledger_conflicts") == 1
    if first_state == "claimed":
        finish.set()
        assert await task is True


async def test_a_permanent_failure_is_recorded_and_only_a_replay_runs_it_again(
    redis: Redis, ns: str, metrics: Metrics
) -> None:
    led = ledger(redis, ns, metrics)
    declined = Effect(raises=PermanentError("card declined"))
    with pytest.raises(PermanentError, match="card declined"):
        await led.once(EFFECT, declined, key="order-1", fingerprint="fp")
    entry = await led.entry(EFFECT, "order-1")
    assert entry is not None and entry.state == "failed" and "PermanentError: card declined" in entry.error

    fn = Effect()
    for other in (led, ledger(redis, ns, owner="w2")):  # redeliveries, here or elsewhere
        with pytest.raises(PermanentError, match="failed before"):
            await other.once(EFFECT, fn, key="order-1", fingerprint="fp")
    assert fn.runs == 0 and declined.runs == 1

    assert await led.once(EFFECT, fn, key="order-1", fingerprint="fp", replay=True) is True
    assert fn.runs == 1
    assert await led.once(EFFECT, fn, key="order-1", fingerprint="fp", replay=True) is False  # done now
    assert fn.runs == 1


async def test_a_transient_failure_releases_the_claim_for_the_next_try(redis: Redis, ns: str, metrics: Metrics) -> None:
    first = ledger(redis, ns, metrics, owner="w1")
    with pytest.raises(TransientError):
        await first.once(EFFECT, Effect(raises=TransientError("503", "mailer")), key="order-1", fingerprint="fp")
    assert await first.entry(EFFECT, "order-1") is None

    fn = Effect()
    assert await ledger(redis, ns, metrics, owner="w2").once(EFFECT, fn, key="order-1", fingerprint="fp") is True
    assert fn.runs == 1
    assert count(metrics, "ledger_claims_expired") == 0


# --- once_each --------------------------------------------------------------------------


async def test_once_each_runs_each_new_key_once(redis: Redis, ns: str, metrics: Metrics) -> None:
    led = ledger(redis, ns, metrics)
    runs: Counter[str] = Counter()

    def effect(key: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            runs[key] += 1

        return run

    def items(keys: range) -> list[tuple[str, str, Callable[[], Awaitable[Any]]]]:
        return [(f"sub-{i}", f"fp-{i}", effect(f"sub-{i}")) for i in keys]

    assert await led.once_each(EFFECT, items(range(50))) == 50
    assert runs == Counter({f"sub-{i}": 1 for i in range(50)})

    assert await led.once_each(EFFECT, items(range(50))) == 0
    assert sum(runs.values()) == 50
    assert count(metrics, "effects_skipped") == 50

    assert await led.once_each(EFFECT, items(range(25, 75))) == 25  # 25 old, 25 new
    assert runs == Counter({f"sub-{i}": 1 for i in range(75)})
    assert count(metrics, "effects_run") == 75
    for i in (0, 49, 74):
        entry = await led.entry(EFFECT, f"sub-{i}")
        assert entry is not None and entry.state == "done" and entry.fingerprint == f"fp-{i}"


async def test_once_each_with_a_key_listed_twice_runs_it_once(redis: Redis, ns: str, metrics: Metrics) -> None:
    """(The second listing went through once(), which marked the key done and forgot it; the
    done-mark pipeline then looked it up again and raised KeyError.)"""
    led, fn, other = ledger(redis, ns, metrics), Effect(), Effect()
    assert await led.once_each(EFFECT, [("sub-1", "fp", fn), ("sub-2", "fp", other), ("sub-1", "fp", fn)]) == 2
    assert (fn.runs, other.runs) == (1, 1)
    assert count(metrics, "ledger_claims_lost") == 0
    for key in ("sub-1", "sub-2"):
        entry = await led.entry(EFFECT, key)
        assert entry is not None and entry.state == "done"
    assert await led.once_each(EFFECT, [("sub-1", "fp", fn), ("sub-1", "fp", fn)]) == 0
    assert fn.runs == 1


# --- namespaces ---------------------------------------------------------------------------


async def test_apps_sharing_a_namespace_run_a_shared_effect_once(redis: Redis, ns: str) -> None:
    fn = Effect()
    app1, app2 = ledger(redis, ns, owner="app1:host:1"), ledger(redis, ns, owner="app2:host:1")
    assert await app1.once(EFFECT, fn, key="order-1", fingerprint="fp") is True
    assert await app2.once(EFFECT, fn, key="order-1", fingerprint="fp") is False
    assert fn.runs == 1


async def test_apps_in_different_namespaces_each_run_it(redis: Redis, ns: str) -> None:
    fn = Effect()
    app1, app2 = ledger(redis, ns + "app1:", owner="app1:host:1"), ledger(redis, ns + "app2:", owner="app2:host:1")
    assert await app1.once(EFFECT, fn, key="order-1", fingerprint="fp") is True
    assert await app2.once(EFFECT, fn, key="order-1", fingerprint="fp") is True
    assert fn.runs == 2


def test_an_events_effects_share_one_cluster_slot(ns: str) -> None:
    led = Ledger(Redis(), namespace=ns, owner="w1", ttl=60, lease=60)  # (no connection is made)
    key = "billing\x1fevt-42"
    a, b = led.key(EFFECT, key), led.key("order.invoice_pdf", key)
    assert "{billing\x1fevt-42}" in a and "{billing\x1fevt-42}" in b
    assert a != b and a.startswith(ns)
    assert key_slot(a.encode()) == key_slot(b.encode()) == key_slot(key.encode())


# --- outages (a private Redis, SIGKILLed) -------------------------------------------------


def outage_client(server: PrivateRedis) -> Redis:
    return Redis.from_url(server.url, socket_connect_timeout=1, socket_timeout=1)


async def test_fail_closed_raises_dependency_down_and_fail_open_runs_unguarded(
    private_redis: PrivateRedis, metrics: Metrics
) -> None:
    client = outage_client(private_redis)
    try:
        led = ledger(client, "ns:", metrics)
        assert await led.once(EFFECT, Effect(), key="warm-up", fingerprint="fp") is True
        private_redis.kill()

        fn = Effect()
        started = time.monotonic()
        with pytest.raises(DependencyDown) as raised:
            await led.once(EFFECT, fn, key="order-1", fingerprint="fp", outage="fail_closed")
        assert time.monotonic() - started < 5
        assert raised.value.dependency == "redis" and raised.value.outage
        assert fn.runs == 0

        started = time.monotonic()
        assert await led.once(EFFECT, fn, key="order-1", fingerprint="fp", outage="fail_open") is True
        assert time.monotonic() - started < 5
        assert fn.runs == 1
        assert count(metrics, "ledger_fail_open") == 1
    finally:
        await client.aclose()


async def test_an_effect_whose_done_mark_was_lost_does_not_run_again(
    private_redis: PrivateRedis, metrics: Metrics
) -> None:
    client = outage_client(private_redis)
    try:
        led = ledger(client, "ns:", metrics)
        sent: list[str] = []

        async def send_then_redis_dies() -> None:
            sent.append("email")  # the effect's work is done...
            private_redis.kill()  # ...and Redis dies before its done mark

        with pytest.raises(DependencyDown, match="ran; its done mark waits for Redis"):
            await led.once(EFFECT, send_then_redis_dies, key="order-1", fingerprint="fp")
        assert sent == ["email"]

        private_redis.start()  # the claim survived (append-only file)
        assert await led.once(EFFECT, send_then_redis_dies, key="order-1", fingerprint="fp") is False
        assert sent == ["email"]
        assert count(metrics, "effects_skipped") == 1
        entry = await led.entry(EFFECT, "order-1")
        assert entry is not None and entry.state == "done"
        # Another owner finds it done too.
        assert await ledger(client, "ns:", owner="w2").once(EFFECT, Effect(), key="order-1", fingerprint="fp") is False
    finally:
        await client.aclose()


# --- regressions ------------------------------------------------------------------------


async def test_a_frozen_owners_late_release_does_not_free_a_newer_live_claim(redis: Redis, ns: str) -> None:
    """(Revisions once counted from 1 and a release deleted the entry: the next claim got
    revision 1 again, and a frozen owner's late release of its own revision 1 deleted it.
    A fourth owner then ran the effect beside the third, no take-over counted.)"""
    frozen = ledger(redis, ns, owner="frozen", lease=0.3)
    thaw, inside = asyncio.Event(), asyncio.Event()

    async def freezes_then_fails() -> None:
        inside.set()
        await thaw.wait()
        raise TransientError("503", "mailer")

    a = asyncio.create_task(frozen.once(EFFECT, freezes_then_fails, key="order-1", fingerprint="fp"))
    await inside.wait()
    await asyncio.sleep(0.4)  # its lease runs out
    with pytest.raises(TransientError):  # b takes the claim over, its try fails: released
        await ledger(redis, ns, owner="b").once(
            EFFECT, Effect(raises=TransientError("503", "mailer")), key="order-1", fingerprint="fp"
        )
    c_running, c_done = asyncio.Event(), asyncio.Event()

    async def c_sends() -> None:
        c_running.set()
        await c_done.wait()

    c = asyncio.create_task(ledger(redis, ns, owner="c").once(EFFECT, c_sends, key="order-1", fingerprint="fp"))
    await c_running.wait()  # c holds a fresh claim (60 s lease)
    thaw.set()
    with pytest.raises(TransientError):
        await a  # the frozen owner's release, on revision 1

    d = Effect()
    try:
        with pytest.raises(EffectBusy):
            await ledger(redis, ns, owner="d").once(EFFECT, d, key="order-1", fingerprint="fp")
        assert d.runs == 0
    finally:
        c_done.set()
        await c
