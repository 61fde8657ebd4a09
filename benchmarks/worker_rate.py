"""Phase (b) of benchmarks.throughput: a ``seqguard worker`` over a pre-loaded input topic, its
rate from its /metrics (polled), under py-spy if asked; then its output topic read back and
checked, and the records written counted per topic.

benchmarks.ledger runs its workers through run_seqguard too, replacing ``worker_env`` in this
module (ledger.worker_overrides) to add its handler's settings: run_seqguard looks it up here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.measure import (
    ROOT,
    CpuMark,
    Workload,
    assigned_consumer,
    cpu_between,
    scrape,
    worker_env,
    worker_log_findings,
)
from benchmarks.profile_summary import py_spy
from tests.harness import LOGS, Deployment, Worker, metric_value
from workers.kafka.embedded import EmbeddedBroker


async def run_seqguard(
    args: argparse.Namespace,
    broker: EmbeddedBroker,
    deployment: Deployment,
    workload: Workload,
    label: str,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """Start a worker on the pre-loaded input; poll /metrics until every record is processed."""
    n, unique = len(workload.records), workload.unique
    worker = Worker(deployment, label=label, **worker_env(args, args.throughput_fetch_wait))
    pids = {"worker": worker.proc.pid, "broker": broker.process.pid}
    samples: list[tuple[float, float, float]] = []  # (t, received, applied)
    first: tuple[float, float, CpuMark] | None = None
    last_change: tuple[float, float, float, CpuMark] | None = None
    spy: subprocess.Popen[bytes] | None = None
    raw_path = None
    text = ""
    started = time.monotonic()
    try:
        while True:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.proc.returncode}: {worker.log_path}\n{worker.tail()}")
            now = time.monotonic()
            scraped = scrape(worker)
            if scraped is not None:
                text = scraped
                received = metric_value(text, "seqguard_events_received_total")
                applied = metric_value(text, "seqguard_events_applied_total")
                mark = CpuMark.take(pids)
                if received > 0 and first is None:
                    first = (now, received, mark)
                    if profile_to is not None:
                        raw_path = LOGS / (profile_to.stem + ".raw")
                        spy = subprocess.Popen(  # noqa: ASYNC220 - py-spy must start at this moment
                            [
                                str(py_spy()),
                                "record",
                                "--pid",
                                str(worker.proc.pid),
                                "--format",
                                "raw",
                                "--threads",
                                "--full-filenames",
                                "--rate",
                                str(args.profile_rate),
                                "-o",
                                str(raw_path),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT,
                        )
                if first is not None and (not samples or (received, applied) != samples[-1][1:]):
                    last_change = (now, received, applied, mark)
                samples.append((now, received, applied))
                if received >= n and applied >= unique:
                    break
                if last_change is not None and now - last_change[0] > args.stall_seconds:
                    print(
                        f"  ! {label}: no progress for {args.stall_seconds} s at {received:.0f}/{n} received, "
                        f"{applied:.0f}/{unique} applied",
                        flush=True,
                    )
                    break
            if now - started > args.timeout:
                print(f"  ! {label}: timed out after {args.timeout} s", flush=True)
                break
            await asyncio.sleep(args.poll)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                spy.kill()
        final_text = scrape(worker) or text
        worker.stop()
    assert first is not None and last_change is not None, f"{label}: the worker processed nothing; {worker.log_path}"
    t1, r1, m1 = first
    t2, r2, a2, m2 = last_change
    span = max(1e-9, t2 - t1)
    cpu = cpu_between(m1, m2)
    result: dict[str, Any] = {
        "received": int(r2),
        "applied": int(a2),
        "seconds": round(span, 2),
        "events_per_s": round(r2 / span),
        "events_per_s_conservative": round((r2 - r1) / span),
        "applied_per_s": round(a2 / span),
        "received_at_first_sample": int(r1),
        "cpu_pct": cpu,
        "worker_cpu_us_per_event": round(1e6 * (m2.pids["worker"] - m1.pids["worker"]) / max(1.0, r2 - r1), 1),
        # What the worker would do with a core to itself (it is single-threaded Python): the
        # figure least disturbed by other processes on a shared machine. An estimate.
        "events_per_cpu_second": round((r2 - r1) / max(1e-9, m2.pids["worker"] - m1.pids["worker"])),
        "metrics": {
            "duplicates": metric_value(final_text, "seqguard_events_duplicate_total"),
            "out_of_order": metric_value(final_text, "seqguard_events_out_of_order_total"),
            "dead_lettered": metric_value(final_text, "seqguard_dead_lettered_total"),
            "order_violations": metric_value(final_text, "seqguard_order_violations_total"),
            "gaps": metric_value(final_text, "seqguard_gaps_skipped_total"),
            "batches": metric_value(final_text, "seqguard_batch_duration_seconds_count"),
            "batch_seconds_mean": round(
                metric_value(final_text, "seqguard_batch_duration_seconds_sum")
                / max(1.0, metric_value(final_text, "seqguard_batch_duration_seconds_count")),
                4,
            ),
        },
        "worker_log": worker_log_findings(worker),
        "samples": len(samples),
    }
    result["metrics"]["events_per_batch"] = round(r2 / max(1.0, result["metrics"]["batches"]), 1)
    if raw_path is not None:
        result["profile_raw"] = str(raw_path.relative_to(ROOT))
    return result


async def verify_output(
    bootstrap: str, topic: str, partitions: int, workload: Workload, limit: float = 120.0
) -> dict[str, Any]:
    """Read the output topic back: every aggregate's sequences must be 1..k, in order, once."""
    consumer = await assigned_consumer(bootstrap, topic, partitions, 50)
    seqs: dict[str, list[int]] = defaultdict(list)
    count = 0
    deadline = time.monotonic() + limit
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            got = 0
            for tp in sorted(batch, key=lambda tp: tp.partition):
                for m in batch[tp]:
                    seqs[m.key.decode()].append(json.loads(m.value)["sequence"])
                got += len(batch[tp])
            count += got
            quiet = time.monotonic() - quiet_since
            if got:
                quiet_since = time.monotonic()
            elif quiet > (1.0 if count >= workload.unique else 5.0):
                break
    finally:
        await consumer.stop()
    wrong = [agg for agg, k in workload.per_aggregate.items() if seqs.get(agg) != list(range(1, k + 1))]
    return {
        "records": count,
        "expected": workload.unique,
        "aggregates_wrong": len(wrong),
        "examples": wrong[:3],
        "ok": count == workload.unique and not wrong,
    }


async def count_records(bootstrap: str, topics: list[str], partitions: int) -> dict[str, int]:
    """Records per topic from the fetch high-water marks (end_offsets is wrong on Tansu, trap 2)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in tps):
            await consumer.getmany(timeout_ms=200, max_records=1)
        return {t: sum(consumer.highwater(TopicPartition(t, p)) or 0 for p in range(partitions)) for t in topics}
    finally:
        await consumer.stop()
