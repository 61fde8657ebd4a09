"""SIGKILL the worker at random points while it flushes batches, again and again.

One record per aggregate holds its sequence, seen IDs and reorder buffer, so whatever
the kill interrupts, the recovered state is a version the worker wrote: never "seen but
not applied" (an ID recorded while the sequence did not move: the event would be lost as
a duplicate) and never "applied but not seen" (the sequence moved without the ID: a
redelivery would apply it twice). State is flushed after output, so it never runs ahead
of the output topic.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from tables.changelog import STATE_TABLE
from tests.harness import (
    Deployment,
    Worker,
    changelog_content,
    consume_all,
    diff,
    event,
    metric_value,
    produce,
    sequences_by_aggregate,
    shuffled_within,
    with_duplicates,
)

AGGREGATES = 500
PER_AGGREGATE = 20
KILLS = 5


def seq_of(seen_key: str) -> int:
    """The harness's event ids are ``<aggregate>-<seq>``; an idempotency key is source + US + id."""
    return int(seen_key.rsplit("-", 1)[1])


def check_consistent(state: dict[str, Any], output: dict[str, list[int]]) -> None:
    for agg, view in state.items():
        n = view["n"]
        seen = {seq_of(k) for k in view["seen"]}
        buffered = {b[0] for b in view["buffer"]}
        assert seen == set(range(1, n)), f"{agg}: next {n} but seen {sorted(seen)}"
        assert all(s > n for s in buffered), f"{agg}: buffered {sorted(buffered)} with next {n}"
        emitted = set(output.get(agg, []))
        assert set(range(1, n)) <= emitted, f"{agg}: state ahead of the output: next {n}, emitted {sorted(emitted)}"


async def kill_after(worker: Worker, received: float, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while metric_value(worker.metrics(), "seqguard_events_received_total") < received:
        assert time.monotonic() < deadline, f"worker never received {received} events\n{worker.tail()}"
        await asyncio.sleep(0.02)
    worker.kill()


@pytest.mark.fault
@pytest.mark.timeout(900)
async def test_kills_during_flushes_leave_each_aggregate_one_consistent_state_record(deployment: Deployment, broker):
    rng = random.Random()  # a new sample of kill points on every run; the seed is printed
    seed = rng.randrange(2**32)
    rng.seed(seed)
    print(f"\nkill points seed: {seed}")
    deployment.extra.update({"SEQGUARD_BATCH_MAX": "100", "SEQGUARD_GAP_TIMEOUT": "600"})
    settings = deployment.settings()
    events = [event(f"acct-{a}", s, "account.note") for s in range(1, PER_AGGREGATE + 1) for a in range(AGGREGATES)]
    stream = with_duplicates(shuffled_within(events, 2_000, rng), 0.05, rng)
    await produce(broker.bootstrap, settings.input_topic, stream)

    for i in range(KILLS):
        worker = Worker(deployment, f"w{i}")
        await worker.ready()
        # Each run re-reads what the last one left uncommitted: kill somewhere in its first few hundred batches.
        await kill_after(worker, rng.uniform(200, 3_000))
        truth = await changelog_content(broker.bootstrap, settings)
        probe = Worker(deployment, f"probe{i}", SEQGUARD_INPUT_TOPIC=f"{deployment.name}.empty")
        try:
            await probe.ready()
            recovered = probe.tables()
        finally:
            probe.kill()
        assert diff(truth, recovered) == [], f"kill {i}: recovered state differs from the changelog"
        output = sequences_by_aggregate(await consume_all(broker.bootstrap, settings.output_topic, quiet=1.0))
        check_consistent(truth[STATE_TABLE], output)
        print(f"kill {i}: {len(truth[STATE_TABLE])} aggregates consistent, {sum(map(len, output.values()))} outputs")

    worker = Worker(deployment, "last")
    try:
        await worker.ready()
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(events), timeout=180, quiet=3)
        final = worker.state()
    finally:
        worker.stop()
    for agg, seqs in sequences_by_aggregate(out).items():
        assert list(dict.fromkeys(seqs)) == list(range(1, PER_AGGREGATE + 1)), f"{agg}: {seqs}"
    assert len(final) == AGGREGATES
    assert all(v["n"] == PER_AGGREGATE + 1 and v["buffer"] == [] for v in final.values())
