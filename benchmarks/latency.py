"""Phase (c) of benchmarks.throughput: end-to-end latency at a steady input rate. A paced producer
into a fresh deployment with a running worker, and a probe consumer on the output topic
measuring receive time - record timestamp; whether the worker kept up, and its CPU.
Phase (c'): the same through benchmarks/forwarder.py, the broker's latency floor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks.forwarder import Forwarder
from benchmarks.measure import (
    CpuMark,
    assigned_consumer,
    cpu_between,
    make_event,
    scrape,
    worker_env,
    worker_log_findings,
)
from tests.harness import LOGS, Deployment, Worker
from workers.kafka.embedded import EmbeddedBroker


def histogram_quantile(text: str, name: str, q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` of a Prometheus histogram (coarse)."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            head, _, value = line.rpartition(" ")
            le = head.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(value)))
    if not buckets or buckets[-1][1] == 0:
        return None
    buckets.sort()
    target = q * buckets[-1][1]
    return next(le for le, cum in buckets if cum >= target)


PHASES = ("fetch", "process", "effects", "state")


def phase_means(text: str) -> dict[str, Any]:
    """Mean milliseconds per batch of each phase of the worker's cycle (its
    seqguard_batch_phase_duration_seconds histogram), and how many times each was timed."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum{", sums), ("_count{", counts)):
            if line.startswith("seqguard_batch_phase_duration_seconds" + suffix):
                head, _, value = line.rpartition(" ")
                into[head.split('phase="')[1].split('"')[0]] = float(value)
    means = {p: round(1000 * sums[p] / counts[p], 1) if counts.get(p) else None for p in PHASES}
    return {"mean_ms": means, "timed": {p: int(counts.get(p, 0)) for p in PHASES}}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run_latency(
    args: argparse.Namespace,
    broker: EmbeddedBroker,
    redis_url: str,
    rate: int,
    fetch_wait: int,
    *,
    forwarder: bool = False,
) -> dict[str, Any]:
    """The paced run through a seqguard worker, or (``forwarder``) through benchmarks/forwarder.py."""
    deployment = Deployment(broker.url, redis_url, extra={"SEQGUARD_PARTITIONS": str(args.partitions)})
    await deployment.create_topics()
    settings = deployment.settings()
    total = int(rate * args.latency_seconds)
    aggregates = args.aggregates
    names = [f"agg-{a:05d}" for a in range(aggregates)]
    # In order: event i is aggregate i % A, sequence i // A + 1 (new aggregates, then new sequences).
    records = [make_event(names[i % aggregates], i // aggregates + 1, args.size) for i in range(total)]
    worker: Worker | Forwarder
    if forwarder:
        log = LOGS / f"{deployment.name}-forwarder.log"
        worker = Forwarder(broker.bootstrap, settings.input_topic, settings.output_topic, fetch_wait, log)
    else:
        worker = Worker(deployment, label=f"latency-{fetch_wait}ms", **worker_env(args, fetch_wait))
    pids = {"worker": worker.proc.pid, "broker": broker.process.pid, "bench": os.getpid()}
    latencies: list[tuple[float, float]] = []  # (send time, latency s)
    last_receive = 0.0
    consumer = None
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=args.producer_linger_ms, acks=1)
    try:
        await worker.ready()
        consumer = await assigned_consumer(
            broker.bootstrap, settings.output_topic, args.partitions, args.probe_fetch_wait
        )
        await producer.start()
        await asyncio.sleep(1.0)  # let the worker's first fetches settle
        done = asyncio.Event()

        async def consume() -> None:
            nonlocal last_receive
            assert consumer is not None
            while len(latencies) < total:
                batch = await consumer.getmany(timeout_ms=100)
                now = time.time()
                if batch:
                    last_receive = now
                for msgs in batch.values():
                    latencies.extend((m.timestamp / 1000.0, now - m.timestamp / 1000.0) for m in msgs)
            done.set()

        reader = asyncio.create_task(consume())
        mark0 = CpuMark.take(pids)
        t_start = time.time()
        start = time.perf_counter()
        sent = 0
        futures = []
        while sent < total:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due:
                key, headers, value = records[sent]
                futures.append(
                    await producer.send(
                        settings.input_topic, value, key=key, headers=headers, timestamp_ms=int(time.time() * 1000)
                    )
                )
                sent += 1
            await asyncio.sleep(0.002)
        send_seconds = time.perf_counter() - start
        t_send_end = time.time()
        mark1 = CpuMark.take(pids)
        await producer.flush()
        for fut in futures:
            await fut
        try:
            await asyncio.wait_for(done.wait(), args.latency_drain_seconds)
        except TimeoutError:
            print(
                f"  ! latency {fetch_wait} ms: {len(latencies)}/{total} output records "
                f"after {args.latency_drain_seconds} s",
                flush=True,
            )
        reader.cancel()
        metrics_text = "" if isinstance(worker, Forwarder) else scrape(worker) or ""
    finally:
        await producer.stop()
        if consumer is not None:
            await consumer.stop()
        worker.stop()
    window = [(sent_at, lat) for sent_at, lat in latencies if sent_at >= t_start + args.latency_warmup]
    ms = sorted(1000 * lat for _, lat in window)
    # Did the worker keep up? A backlog shows as latency growing over the run and as output
    # still arriving well after the producer stopped.
    window.sort()
    third = len(window) // 3
    early = sorted(1000 * lat for _, lat in window[:third])
    late = sorted(1000 * lat for _, lat in window[-third:]) if third else []
    drain = max(0.0, last_receive - t_send_end)
    p50_early, p50_late = percentile(early, 0.5), percentile(late, 0.5)
    kept_up = drain < 1.0 and not (p50_late > 2 * p50_early and p50_late > 250)
    return {
        "pipeline": "forwarder" if forwarder else "seqguard",
        "fetch_max_wait_ms": fetch_wait,
        "target_rate_per_s": rate,
        "sent": total,
        "send_rate_per_s": round(total / send_seconds),
        "received": len(latencies),
        "measured_after_warmup": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 1),
        "p90_ms": round(percentile(ms, 0.90), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "max_ms": round(ms[-1], 1) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
        "p50_first_third_ms": round(p50_early, 1),
        "p50_last_third_ms": round(p50_late, 1),
        "output_after_producer_stopped_s": round(drain, 2),
        "kept_up": kept_up,
        "output_rate_per_s": round(len(latencies) / max(1e-9, last_receive - t_start)),
        "worker_apply_lag_p50_le_s": histogram_quantile(metrics_text, "seqguard_apply_lag_seconds", 0.5),
        "worker_apply_lag_p99_le_s": histogram_quantile(metrics_text, "seqguard_apply_lag_seconds", 0.99),
        "worker_cycle": phase_means(metrics_text),
        "cpu_pct": cpu_between(mark0, mark1),
        "worker_log": worker_log_findings(worker),
    }
