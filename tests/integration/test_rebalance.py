"""Two workers share the partitions; one joins mid-stream, one is SIGKILLed mid-stream.

Covers the risks of faust-streaming's open issues on duplicates and lost events around
rebalances (#502, #315, #527): whatever the rebalances, per aggregate nothing is lost
and nothing is applied out of order; re-emissions are counted. Once per table store: with
rocksdb, partitions move between the workers' own databases, standbys included.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import pytest

from tests.harness import (
    STORES,
    Deployment,
    Worker,
    consume_all,
    event,
    metric_value,
    produce,
    shuffled_within,
    with_duplicates,
)

AGGREGATES = 500
PER_AGGREGATE = 20


@pytest.mark.fault
@pytest.mark.timeout(600)
@pytest.mark.parametrize("store", STORES)
async def test_rebalances_and_a_killed_member_lose_nothing_and_keep_order(
    deployment: Deployment, broker, store: str
) -> None:
    deployment.store = store
    rng = random.Random(4)
    settings = deployment.settings()
    events = [event(f"acct-{a}", s, "account.updated") for s in range(1, PER_AGGREGATE + 1) for a in range(AGGREGATES)]
    stream = with_duplicates(shuffled_within(events, 2_000, rng), 0.05, rng)
    third = len(stream) // 3

    w1 = Worker(deployment, "w1")
    await w1.ready()
    await produce(broker.bootstrap, settings.input_topic, stream[:third])
    w2 = Worker(deployment, "w2")  # joins mid-stream: partitions move from w1 to w2
    await produce(broker.bootstrap, settings.input_topic, stream[third : 2 * third])
    await w2.ready(timeout=90)
    producing = asyncio.ensure_future(produce(broker.bootstrap, settings.input_topic, stream[2 * third :]))
    deadline = time.monotonic() + 60
    while metric_value(w2.metrics(), "seqguard_events_received_total") < 200:
        assert time.monotonic() < deadline, "w2 never got partitions"
        await asyncio.sleep(0.1)
    w2.kill()  # its partitions fail over to w1, with their tables
    await producing
    try:
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(events), timeout=240, quiet=4)
        assert w1.proc.poll() is None
    finally:
        w1.stop()

    by_agg: dict[str, list[int]] = {}
    for r in sorted(out, key=lambda r: (r.partition, r.offset)):
        by_agg.setdefault(r.key.decode(), []).append(json.loads(r.value)["sequence"])
    repeats = 0
    for agg, seqs in by_agg.items():
        firsts = list(dict.fromkeys(seqs))
        assert firsts == list(range(1, PER_AGGREGATE + 1)), f"{agg}: {seqs}"
        repeats += len(seqs) - len(firsts)
    assert len(by_agg) == AGGREGATES
    print(f"\n{len(out)} output records for {len(events)} events: {repeats} re-emitted around the rebalances")
