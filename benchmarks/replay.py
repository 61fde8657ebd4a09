"""Replay throughput: 100,000 DLQ records over 1,000 aggregates, replayed in order.

    .venv/bin/python -m benchmarks.replay [--records 100000] [--aggregates 1000]

In one run on the embedded broker: fills a DLQ with records shaped exactly as the worker
writes them (shuffled, so the replay must sort them), times `seqguard dlq replay`'s code
path (read the DLQ and the markers to their end, plan, republish, mark), checks that the
input topic now holds each aggregate's records in sequence order, then starts a worker on
that input and times the input path on the same records, and prints both rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import defaultdict
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests.harness import Deployment, Worker, consume_all, metric_value, start_redis
from workers.dlq.records import Failure, dlq_headers
from workers.dlq.replay import Filters, execute, load_plan
from workers.envelope import encode_structured
from workers.kafka.embedded import start_broker
from workers.records import InRecord


async def fill_dlq(bootstrap: str, settings, records: int, aggregates: int, rng: random.Random) -> None:
    per = records // aggregates
    items = [(a, s) for a in range(aggregates) for s in range(1, per + 1)]
    rng.shuffle(items)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=262_144)
    await producer.start()
    try:
        now = time.time()
        for i, (a, s) in enumerate(items):
            agg = f"agg-{a}"
            headers, value = encode_structured(
                {"id": f"{agg}-{s}", "source": "bench", "type": "bench.step", "sequence": s, "data": {"pad": "x" * 120}}
            )
            timestamp = (int(now * 1000) + s) / 1000  # InRecord holds seconds
            source = InRecord(
                settings.input_topic, a % settings.partitions, i, timestamp, agg.encode(), value, list(headers)
            )
            failure = Failure("timeout_exceeded", "handler ran past 10 s", 3, agg, s, "bench.step", f"{agg}-{s}")
            dlq_h = dlq_headers(source, failure, worker_id="bench", max_message=1000, now=now)
            await producer.send(settings.dlq, value, key=agg.encode(), headers=dlq_h)
        await producer.flush()
    finally:
        await producer.stop()


async def input_rate(deployment: Deployment, total: int) -> tuple[float, Worker]:
    worker = Worker(deployment, "bench", SEQGUARD_DOMAINS="", SEQGUARD_LOG_LEVEL="warning")
    await worker.ready(timeout=120)
    first = last = None
    seen = 0.0
    deadline = time.monotonic() + 600
    while seen < total and time.monotonic() < deadline:
        seen = metric_value(worker.metrics(), "seqguard_events_received_total")
        now = time.monotonic()
        if seen and first is None:
            first = (now, seen)
        last = (now, seen)
        await asyncio.sleep(0.2)
    assert first is not None and last is not None
    return (last[1] - first[1]) / max(last[0] - first[0], 1e-9), worker


async def main_async(args: argparse.Namespace) -> int:
    broker = start_broker()
    redis_proc = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        redis_proc, redis_url = start_redis()
    try:
        deployment = Deployment(broker.url, redis_url)
        await deployment.create_topics()
        settings = deployment.settings()
        await fill_dlq(broker.bootstrap, settings, args.records, args.aggregates, random.Random(5))

        os.environ.update(deployment.env())  # execute() reads the same settings the CLI would
        started = time.monotonic()
        plan = await load_plan(settings, Filters())
        planned = time.monotonic()
        sent = await execute(settings, plan, rate=0)
        done = time.monotonic()
        replay_rate = sent / (done - started)

        republished = await consume_all(broker.bootstrap, settings.input_topic, expect=sent, timeout=120, quiet=1)
        by_agg: dict[str, list[int]] = defaultdict(list)
        for r in sorted(republished, key=lambda r: (r.partition, r.offset)):
            by_agg[r.key.decode()].append(json.loads(r.value)["sequence"])
        in_order = all(seqs == sorted(seqs) for seqs in by_agg.values())

        apply_rate, worker = await input_rate(deployment, sent)
        worker.stop()
        report = {
            "records": sent,
            "aggregates": len(by_agg),
            "read_and_plan_seconds": round(planned - started, 2),
            "republish_and_mark_seconds": round(done - planned, 2),
            "replay_records_per_s": round(replay_rate),
            "republished_in_order_per_aggregate": in_order,
            "input_path_events_per_s": round(apply_rate),
            "replay_over_input_path": round(replay_rate / apply_rate, 2),
            "command": f".venv/bin/python -m benchmarks.replay --records {args.records} --aggregates {args.aggregates}",
        }
        print(json.dumps(report, indent=2))
        out = Path(__file__).parent / "results" / f"replay-{time.strftime('%Y-%m-%d')}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        return 0 if in_order and sent == args.records else 1
    finally:
        broker.stop()
        if redis_proc:
            redis_proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--aggregates", type=int, default=1_000)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
