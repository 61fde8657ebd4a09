"""The gap clock: how long a buffered event has waited for the events before it.

A gap (sequence n+1 buffered, n missing) is given up on after SEQGUARD_GAP_TIMEOUT: skipped
(`gap_skipped` in the audit topic) or, for strict types, parked (`gap_parked`); n arriving
after that is dead-lettered as an order violation. The clock must be the stream's: time that
passed while the worker was down, recovering or working through a backlog is not time the
missing event was late by, when it was in the topic all along. These tests use real worker
processes, the embedded broker and Redis, and default (producer wall time) record timestamps,
as a real deployment's producers write them.

Tests 1 and 2 fail on a wall-time gap clock; the real-gap tests pass on either clock.

This module is also a handler domain (``registry``, loaded by the workers of the backlog
test through SEQGUARD_DOMAINS): `gapclock.work` is an event whose handler takes a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.harness import (
    Deployment,
    Worker,
    audit_log,
    committed_offsets,
    consume_all,
    event,
    metric_value,
    produce,
    sequences_by_aggregate,
    wait_until,
)
from workers.envelope import Envelope
from workers.handlers import Context, Registry

# --------------------------------------------------------------------------- a slow domain

registry = Registry()
WORK = "gapclock.work"
WORK_SECONDS = 0.01
DOMAINS = f"workers.domains.orders,workers.domains.builds,{__name__}"


@registry.handler(WORK)
async def work(event: Envelope, data: Any, ctx: Context) -> None:
    """A handler that calls a slow service: a backlog of these takes a while to apply."""
    await asyncio.sleep(WORK_SECONDS)


# --------------------------------------------------------------------------- helpers

CHECK_INTERVAL = "0.2"  # SEQGUARD_GAP_CHECK_INTERVAL: the sweep looks at gaps 5 times a second
POLICIES = """
[types."ledger.entry"]
ordering = "strict"          # strict: gaps always park
"""
GAP_KINDS = ("gap_skipped", "gap_parked")


def clock_env(gap_timeout: float, **more: str) -> dict[str, str]:
    return {"SEQGUARD_GAP_TIMEOUT": str(gap_timeout), "SEQGUARD_GAP_CHECK_INTERVAL": CHECK_INTERVAL, **more}


def received(worker: Worker) -> float:
    return metric_value(worker.metrics(), "seqguard_events_received_total")


async def consumed(bootstrap: str, deployment: Deployment, total: int, *, timeout: float = 60.0) -> None:
    """Until the deployment's workers acknowledged all ``total`` input records (committed offsets:
    exact, also when a record is delivered twice)."""
    s = deployment.settings()

    async def done() -> bool:
        return await committed_offsets(bootstrap, s.app_id, s.input_topic, s.partitions) >= total

    await wait_until(done, timeout=timeout, what=f"all {total} input records consumed and committed", interval=0.2)


async def outcome(bootstrap: str, deployment: Deployment) -> tuple[dict[str, list[int]], list[dict[str, Any]], Counter]:
    """What the deployment wrote: applied sequences per aggregate, gap audit records, DLQ records
    by error class. Read once the worker consumed its input: each topic until quiet."""
    s = deployment.settings()
    out = await consume_all(bootstrap, s.output_topic, quiet=2.0, timeout=60)
    audit = [body for _, body in await audit_log(bootstrap, s.audit_topic)]
    dlq = await consume_all(bootstrap, s.dlq, quiet=1.0, timeout=30)
    classes = Counter(dict(r.headers).get("seqguard-error-class", b"?").decode() for r in dlq)
    return sequences_by_aggregate(out), [a for a in audit if a["kind"] in GAP_KINDS], classes


def evidence(
    applied: dict[str, list[int]], want: dict[str, list[int]], gaps: list[dict[str, Any]], dlq: Counter
) -> str:
    wrong = {agg: applied.get(agg, []) for agg, seqs in want.items() if applied.get(agg, []) != seqs}
    sample = dict(list(wrong.items())[:3])
    kinds = Counter(g["kind"] for g in gaps)
    return (
        f"{len(wrong)} of {len(want)} aggregates not applied in full and in order (e.g. {sample}); "
        f"gap audit records: {dict(kinds)} (e.g. {gaps[:2]}); DLQ records by class: {dict(dlq)}"
    )


# --------------------------------------------------------------------------- 1. worker down


GAPPED = 200  # aggregates whose first event is late
EVENTS = 5  # events per gapped aggregate: 1..5
FILLER_AGGREGATES, FILLER_EVENTS = 2_000, 10  # 20k in-order events of other aggregates


@pytest.mark.fault
@pytest.mark.timeout(180)
async def test_worker_down_longer_than_gap_timeout_applies_everything(broker, redis_url) -> None:
    """Sequence 1 of 200 aggregates is produced within the gap timeout of 2..5 (by CreateTime),
    but only after the worker, which buffered 2..5, was SIGKILLed; the worker stays down for
    3 gap timeouts. Nothing was late in the stream: everything is applied, no gap, no DLQ.

    On a wall-time clock the restarted worker's first sweeps find 2..5 waiting since before
    the kill and skip the gap before it reaches the 1s, which sit behind 20k other events.
    """
    gap_timeout = 3.0  # the setup (buffer, commit, kill, produce) must fit well within it
    bootstrap = broker.bootstrap
    deployment = Deployment(broker.url, redis_url, extra=clock_env(gap_timeout, SEQGUARD_COMMIT_INTERVAL="0.2"))
    await deployment.create_topics()
    s = deployment.settings()
    gapped = [f"acct-{a}" for a in range(GAPPED)]
    filler = [
        event(f"fill-{a}", seq, "account.updated")
        for seq in range(1, FILLER_EVENTS + 1)
        for a in range(FILLER_AGGREGATES)
    ]
    missing = [event(agg, 1, "account.updated") for agg in gapped]

    first = Worker(deployment, "w1")
    await first.ready()
    started = time.time()
    ahead = await produce(
        bootstrap, s.input_topic, [event(agg, seq, "account.updated") for seq in range(2, EVENTS + 1) for agg in gapped]
    )

    def all_buffered() -> bool:
        state = first.state()
        return all(
            (v := state.get(agg)) is not None and v["n"] == 1 and len(v["buffer"]) == EVENTS - 1 for agg in gapped
        )

    await wait_until(all_buffered, timeout=30, what="2..5 of every aggregate buffered", interval=0.05)
    # Acknowledged, hence their state records written: the restarted worker recovers the buffers.
    await consumed(bootstrap, deployment, ahead, timeout=30)
    first.kill()
    killed = time.monotonic()

    # While it is down: a backlog of other aggregates' events, then the missing 1s.
    await produce(bootstrap, s.input_topic, filler)
    await produce(bootstrap, s.input_topic, missing)
    setup = time.time() - started  # >= CreateTime of the 1s minus that of 2..5
    assert setup < gap_timeout * 0.8, (
        f"setup took {setup:.2f} s: the 1s were really late by the stream (gap timeout {gap_timeout} s); "
        "this machine is too slow for this test"
    )

    await asyncio.sleep(max(0.0, killed + 3 * gap_timeout - time.monotonic()))
    down = time.monotonic() - killed
    second = Worker(deployment, "w2")
    await second.ready()
    await consumed(bootstrap, deployment, ahead + len(filler) + len(missing))
    applied, gaps, dlq = await outcome(bootstrap, deployment)
    second.stop()

    want = {agg: list(range(1, EVENTS + 1)) for agg in gapped}
    assert all(applied.get(agg) == seqs for agg, seqs in want.items()) and not gaps and not dlq, (
        f"worker down {down:.1f} s (gap timeout {gap_timeout} s, setup {setup:.2f} s): "
        + evidence(applied, want, gaps, dlq)
    )
    fillers = {f"fill-{a}": list(range(1, FILLER_EVENTS + 1)) for a in range(FILLER_AGGREGATES)}
    assert all(applied.get(agg) == seqs for agg, seqs in fillers.items()), evidence(applied, fillers, gaps, dlq)


# --------------------------------------------------------------------------- 2. backlog


BACKLOG = 600  # slow events (WORK_SECONDS each): about 3 s per partition, 3 gap timeouts


async def test_backlog_longer_than_gap_timeout_applies_everything(broker, redis_url) -> None:
    """50 aggregates' 1, 3, then a backlog of slow events of other aggregates, then 2, 4: all
    produced within a few tens of ms, before the worker starts. Applying the backlog takes
    about 3 gap timeouts per partition, in batches of 20 (0.2 s each) with sweeps between; in
    stream time 2 was late by milliseconds. Everything is applied, no gap, no DLQ.

    On a wall-time clock 3 waits while the backlog is applied, and the gap is skipped.
    """
    gap_timeout = 1.0
    bootstrap = broker.bootstrap
    deployment = Deployment(
        broker.url,
        redis_url,
        extra=clock_env(gap_timeout, SEQGUARD_PARTITIONS="2", SEQGUARD_BATCH_MAX="20", SEQGUARD_DOMAINS=DOMAINS),
    )
    await deployment.create_topics()
    s = deployment.settings()
    gapped = [f"acct-{a}" for a in range(50)]

    def of(seqs: tuple[int, ...]) -> list[Any]:
        return [event(agg, seq, "account.updated") for seq in seqs for agg in gapped]

    started = time.time()
    total = await produce(
        bootstrap,
        s.input_topic,
        of((1, 3)) + [event(f"job-{j}", 1, WORK) for j in range(BACKLOG)] + of((2, 4)),
    )
    span = time.time() - started  # >= CreateTime of the 2s minus that of the 3s
    assert span < gap_timeout / 2, f"producing took {span:.2f} s: too slow a machine for this test"

    worker = Worker(deployment)
    await worker.ready()
    t0 = time.monotonic()
    await consumed(bootstrap, deployment, total)
    took = time.monotonic() - t0
    applied, gaps, dlq = await outcome(bootstrap, deployment)
    worker.stop()

    want = {agg: [1, 2, 3, 4] for agg in gapped}
    assert all(applied.get(agg) == seqs for agg, seqs in want.items()) and not gaps and not dlq, (
        f"backlog applied in {took:.1f} s (gap timeout {gap_timeout} s, produced in {span:.3f} s): "
        + evidence(applied, want, gaps, dlq)
    )
    assert all(applied.get(f"job-{j}") == [1] for j in range(BACKLOG))


# --------------------------------------------------------------------------- 3. real gaps


class BusyInput:
    """Other aggregates' in-order events, one every ~20 ms, until stopped: a busy input."""

    def __init__(self, bootstrap: str, topic: str, aggregates: int = 5, interval: float = 0.02) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.aggregates = [f"busy-{a}" for a in range(aggregates)]
        self.interval = interval
        self.sent: dict[str, int] = dict.fromkeys(self.aggregates, 0)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def count(self) -> int:
        return sum(self.sent.values())

    async def __aenter__(self) -> BusyInput:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        await producer.start()
        self._task = asyncio.ensure_future(self._run(producer))
        return self

    async def _run(self, producer: AIOKafkaProducer) -> None:
        try:
            i = 0
            while not self._stop.is_set():
                agg = self.aggregates[i % len(self.aggregates)]
                key, headers, value = event(agg, self.sent[agg] + 1, "account.updated")
                await (await producer.send(self.topic, value, key=key, headers=headers))
                self.sent[agg] += 1
                i += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval)
        finally:
            await producer.stop()

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


async def real_gap(broker, redis_url, tmp_path: Path, *, busy: bool, strict: bool) -> None:
    """A missing event that is never produced: the gap is given up on exactly once, no earlier
    than the gap timeout and within a generous deadline after it, whether the input is idle
    after the gap or busy with other aggregates' events (on the same partition)."""
    gap_timeout = 2.0
    policy_file = tmp_path / "policies.toml"
    policy_file.write_text(POLICIES)
    extra = clock_env(gap_timeout, SEQGUARD_POLICY_FILE=str(policy_file))
    if busy:
        extra["SEQGUARD_PARTITIONS"] = "1"  # the busy aggregates share the gapped one's partition
    bootstrap = broker.bootstrap
    deployment = Deployment(broker.url, redis_url, extra=extra)
    await deployment.create_topics()
    s = deployment.settings()
    agg, kind = ("ledger-1", "gap_parked") if strict else ("acct-1", "gap_skipped")
    seqs, want = ((1, 3, 4), [1]) if strict else ((1, 2, 4, 5), [1, 2, 4, 5])
    event_type = "ledger.entry" if strict else "account.updated"

    worker = Worker(deployment)
    await worker.ready()
    async with contextlib.AsyncExitStack() as stack:
        feed = await stack.enter_async_context(BusyInput(bootstrap, s.input_topic)) if busy else None
        if feed is not None:
            await wait_until(lambda: received(worker) >= 10, timeout=30, what="the busy input flows", interval=0.1)
        sent_at = time.time()
        await produce(bootstrap, s.input_topic, [event(agg, seq, event_type) for seq in seqs])

        async def gap_records() -> list[tuple[float, dict[str, Any]]]:
            return [(ts, b) for ts, b in await audit_log(bootstrap, s.audit_topic, quiet=0.3) if b["kind"] in GAP_KINDS]

        found = await wait_until(
            gap_records, timeout=gap_timeout + 30, what=f"the gap of {agg} given up on", interval=0.3
        )
        (at, record), *more = found
        assert not more, found
        assert record["kind"] == kind and record["aggregate"] == agg, record
        if strict:
            assert record["seq"] == 2, record  # parked where the gap begins
        else:
            assert (record["first"], record["last"]) == (3, 3), record
        waited = at - sent_at
        assert waited >= gap_timeout - 0.01, f"given up on after {waited:.2f} s, before the {gap_timeout} s gap timeout"

        # Nothing more happens to it: a period of 3 gap timeouts, idle or busy.
        await asyncio.sleep(3 * gap_timeout)
    await consumed(bootstrap, deployment, len(seqs) + (feed.count if feed is not None else 0), timeout=30)
    applied, gaps, dlq = await outcome(bootstrap, deployment)
    metrics = worker.metrics()
    worker.stop()

    assert [(g["kind"], g["aggregate"]) for g in gaps] == [(kind, agg)], gaps
    assert applied.get(agg) == want, applied.get(agg)
    assert not dlq, dlq
    if strict:
        assert metric_value(metrics, "seqguard_parked_aggregates") == 1
    else:
        assert metric_value(metrics, "seqguard_gaps_skipped_total") == 1
    if feed is not None:
        assert {a: applied.get(a) for a in feed.aggregates} == {a: list(range(1, n + 1)) for a, n in feed.sent.items()}


async def test_real_gap_is_skipped_once_with_idle_input(broker, redis_url, tmp_path: Path) -> None:
    await real_gap(broker, redis_url, tmp_path, busy=False, strict=False)


async def test_real_gap_is_skipped_once_with_busy_input(broker, redis_url, tmp_path: Path) -> None:
    await real_gap(broker, redis_url, tmp_path, busy=True, strict=False)


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "busy"])
async def test_real_gap_parks_once_for_strict_types(broker, redis_url, tmp_path: Path, busy: bool) -> None:
    await real_gap(broker, redis_url, tmp_path, busy=busy, strict=True)
