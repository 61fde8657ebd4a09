"""SIGKILL the worker (quiescent and mid-stream), restart it, and check nothing is lost,
nothing is out of order, the domain state is right, and the tables recover key by key.

The key-by-key check is what catches the embedded broker's ListOffsets trap
(docs/embedded-broker.md): run with SEQGUARD_PROBE_CHANGELOG_ENDS=false and the
recovered table misses the tail of each changelog's last batch.

Each test runs once per table store (SEQGUARD_STORE). With rocksdb a worker restarted under
the same SEQGUARD_WORKER_ID recovers from its local checkpoint: it reads only the changelog
written since, which Faust's recovery log tables show (``Highwater`` and ``Reading Starts At``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from tables.changelog import STATE_TABLE
from tests.harness import (
    STORES,
    Deployment,
    Worker,
    changelog_content,
    consume_all,
    diff,
    event,
    metric_value,
    produce,
    shuffled_within,
    with_duplicates,
)
from workers.effects import Effects

AGGREGATES = 1_000
#: SEQGUARD_BATCH_MAX of the killed workers: a kill leaves at most one batch's state records past
#: RocksDB's checkpoint (written, maybe acknowledged, not yet settled), so a restart reads at most this.
BATCH = 200
#: seq -> type: the order lifecycle, with notes (no handler) in between: 10 events an order.
LIFECYCLE = {
    1: "order.created",
    2: "order.paid",
    3: "order.reserved",
    4: "order.note",
    5: "order.note",
    6: "order.note",
    7: "order.note",
    8: "order.shipped",
    9: "order.note",
    10: "order.delivered",
}
HANDLED = [f"{s}:{t}" for s, t in LIFECYCLE.items() if t != "order.note"]


def order_events(rng: random.Random) -> tuple[list[Any], list[Any]]:
    """Two halves of a shuffled, 5%-duplicated stream; each aggregate's events split across both."""

    def one(a: int, s: int) -> Any:
        data: dict[str, Any] = {"amount_cents": 100 + a, "currency": "EUR"} if s == 2 else {"n": s}
        return event(f"order-{a}", s, LIFECYCLE[s], data, schemaversion=2 if s == 2 else 1)

    first = [one(a, s) for s in range(1, 6) for a in range(AGGREGATES)]
    second = [one(a, s) for s in range(6, 11) for a in range(AGGREGATES)]
    return (
        with_duplicates(shuffled_within(first, 2_000, rng), 0.05, rng),
        with_duplicates(shuffled_within(second, 2_000, rng), 0.05, rng),
    )


async def wait_idle(worker: Worker, received: int, timeout: float = 120.0) -> None:
    """Until the worker has consumed ``received`` records and its offsets are committed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric_value(worker.metrics(), "seqguard_events_received_total") >= received:
            await asyncio.sleep(2.5)  # > SEQGUARD_COMMIT_INTERVAL (1 s in tests)
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker consumed fewer than {received} records in {timeout} s")


def recovery_reads(worker: Worker) -> tuple[int, int]:
    """(changelog records the worker's table recoveries read, records the changelog held at the
    last one), from Faust's recovery log: per partition, the last offset and where reading started."""
    read, last = 0, {}
    for line in worker.log_path.read_text(errors="replace").splitlines():
        text = json.loads(line).get("event", "") if line.startswith("{") else ""
        if "Highwater - Active" in text:
            last = table_column(text)
        elif "Reading Starts At - Active" in text:
            read += sum(last[p] - max(start, -1) for p, start in table_column(text).items())  # -1: from the start
    return read, sum(offset + 1 for offset in last.values())


def table_column(text: str) -> dict[int, int]:
    """partition -> the last column of a Faust log table (one topic: the state changelog)."""
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in text.splitlines() if row.startswith("| ")]
    return {int(r[1]): int(r[2]) for r in rows if r[1].isdigit()}


@pytest.mark.fault
@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", STORES)
async def test_sigkilled_worker_loses_nothing_and_recovers_tables_key_by_key(
    deployment: Deployment, broker, redis_url, store: str
) -> None:
    deployment.store = store
    rng = random.Random(2)
    first, second = order_events(rng)
    settings = deployment.settings()
    bootstrap = broker.bootstrap

    # Phase 1: process the first half, let the worker settle, kill it, compare tables.
    # One SEQGUARD_WORKER_ID for the restarts: with rocksdb they recover from their checkpoint.
    worker = Worker(deployment, "w1", SEQGUARD_WORKER_ID="w", SEQGUARD_BATCH_MAX=str(BATCH))
    await worker.ready()
    await produce(bootstrap, settings.input_topic, first)
    await wait_idle(worker, len(first))
    before_kill = worker.tables()
    assert len(before_kill[STATE_TABLE]) == AGGREGATES
    worker.kill()

    worker = Worker(deployment, "w2", SEQGUARD_WORKER_ID="w", SEQGUARD_BATCH_MAX=str(BATCH))
    await worker.ready()
    recovered = worker.tables()
    assert diff(before_kill, recovered) == [], "tables recovered after a kill differ from before it"
    assert diff(await changelog_content(bootstrap, settings), recovered) == []
    read, held = recovery_reads(worker)
    assert held >= AGGREGATES and (read >= held if store == "memory" else read <= BATCH), (read, held)

    # Phase 2: kill the worker mid-stream, while it applies the second half.
    producing = asyncio.ensure_future(produce(bootstrap, settings.input_topic, second))
    deadline = time.monotonic() + 60
    while metric_value(worker.metrics(), "seqguard_events_received_total") < len(second) // 3:
        assert time.monotonic() < deadline, "worker made no progress"
        await asyncio.sleep(0.05)
    worker.kill()
    await producing

    # Recovery probe: a worker whose input is an empty topic recovers the same tables
    # (same app id) but has nothing to process, so what it holds is exactly what it recovered.
    truth = await changelog_content(bootstrap, settings)
    probe = Worker(deployment, "probe", SEQGUARD_INPUT_TOPIC=f"{deployment.name}.empty", SEQGUARD_WORKER_ID="probe")
    try:
        await probe.ready()
        recovered = probe.tables()
    finally:
        probe.kill()
    assert diff(truth, recovered) == [], "tables recovered after a mid-stream kill differ from their changelogs"

    worker = Worker(deployment, "w3", SEQGUARD_WORKER_ID="w")
    try:
        await worker.ready()
        read, held = recovery_reads(worker)  # with rocksdb: what was written since w2's last settle
        assert read >= held if store == "memory" else read <= BATCH, (read, held)
        out = await consume_all(bootstrap, settings.output_topic, expect=AGGREGATES * 10, timeout=180, quiet=3)
        await wait_idle(worker, 1, timeout=30)
        final = worker.tables()
    finally:
        worker.stop()
    assert diff(await changelog_content(bootstrap, settings), final) == []

    # The output: per aggregate, first appearances are exactly 1..10 in order; any repeat
    # is a re-emission of an event already emitted (no transactions: possible after a kill).
    by_agg: dict[str, list[int]] = {}
    for r in sorted(out, key=lambda r: (r.partition, r.offset)):
        by_agg.setdefault(r.key.decode(), []).append(json.loads(r.value)["sequence"])
    assert len(by_agg) == AGGREGATES
    repeats = 0
    for agg, seqs in by_agg.items():
        firsts = list(dict.fromkeys(seqs))
        assert firsts == list(range(1, 11)), f"{agg}: {seqs}"
        repeats += len(seqs) - len(firsts)
    print(f"\noutput records: {len(out)}, re-emitted after the kill: {repeats}")

    assert all(v["n"] == 11 and v["p"] is None and v["buffer"] == [] for v in final[STATE_TABLE].values())

    # The applied state: each order's handlers ran once each, in order; one email per order.
    redis = Redis.from_url(redis_url)
    try:
        effects = Effects(redis, prefix=settings.redis_prefix)
        for a in range(AGGREGATES):
            assert await effects.history("order", f"order-{a}") == HANDLED
        emails = await effects.outbox("emails")
        assert sorted(e["order"] for e in emails) == sorted(f"order-{a}" for a in range(AGGREGATES))
    finally:
        await redis.aclose()


@pytest.mark.fault
@pytest.mark.timeout(300)
async def test_a_restarted_rocksdb_worker_reads_only_the_changelog_since_its_checkpoint(
    deployment: Deployment, broker
) -> None:
    """After a SIGTERM and after a SIGKILL, a restart under the same SEQGUARD_WORKER_ID reads
    next to nothing of a changelog of thousands of records, and its state is right: the next
    events apply in order, and duplicates of applied ones are still skipped."""
    deployment.store = "rocksdb"
    settings, bootstrap, n = deployment.settings(), broker.bootstrap, 300
    received = 0

    async def apply(seqs: range, worker: Worker) -> None:
        nonlocal received
        batch = [event(f"ckpt-{a}", seq, "note") for seq in seqs for a in range(n)]
        batch += [event(f"ckpt-{a}", seqs[0] - 1, "note") for a in range(n) if seqs[0] > 1]  # duplicates
        received += await produce(bootstrap, settings.input_topic, batch)
        await wait_idle(worker, received)

    worker = Worker(deployment, "first", SEQGUARD_WORKER_ID="ckpt")
    try:
        await worker.ready()
        await apply(range(1, 4), worker)
        worker.stop()
        received = 0  # a new process counts from zero

        worker = Worker(deployment, "after-sigterm", SEQGUARD_WORKER_ID="ckpt")
        await worker.ready()
        read, held = recovery_reads(worker)
        assert held >= n and read < held // 10, (read, held)
        assert diff(await changelog_content(bootstrap, settings), worker.tables()) == []
        await apply(range(4, 5), worker)
        worker.kill()
        received = 0

        worker = Worker(deployment, "after-sigkill", SEQGUARD_WORKER_ID="ckpt")
        await worker.ready()
        read, held = recovery_reads(worker)
        assert held >= 2 * n and read < held // 10, (read, held)
        await apply(range(5, 6), worker)
        state = worker.state()
    finally:
        worker.stop()
    out = await consume_all(bootstrap, settings.output_topic, expect=5 * n, timeout=60, quiet=2)
    by_agg: dict[str, list[int]] = {}
    for r in sorted(out, key=lambda r: (r.partition, r.offset)):
        by_agg.setdefault(r.key.decode(), []).append(json.loads(r.value)["sequence"])
    assert by_agg == {f"ckpt-{a}": [1, 2, 3, 4, 5] for a in range(n)}  # nothing lost, nothing doubled
    assert all(state[f"ckpt-{a}"]["n"] == 6 for a in range(n))
