"""How a worker's cost grows with the number of aggregates, per table store.

    .venv/bin/python -m benchmarks.scaling [--aggregates 10000,100000,1000000] [--stores memory,rocksdb]

For each N and each store (SEQGUARD_STORE, passed to the worker as it is), one after the other
on a fresh embedded broker:

1. empty start: a worker on empty topics, from process start to the first /readyz 200 (the
   fixed cost: imports, group join), and its RSS once ready: the baseline;
2. pre-load N aggregates x --events-per-aggregate events, in order, round by round (every
   aggregate's sequence 1, then every aggregate's 2, ...), --size bytes each, no handler
   (SEQGUARD_DOMAINS=""); start a worker and poll /metrics until every event is applied;
   its RSS then (VmRSS from /proc; memory per aggregate = (RSS - baseline RSS) / N);
3. SIGTERM, then the state changelog: records and bytes written, and key + value bytes of
   the latest record per aggregate (benchmarks/changelog_stats.py); the data dir's size;
4. restart after SIGTERM, and again after SIGKILL: from process start to the first /readyz
   200, the worker's CPU seconds by then, the changelog records Faust said it would read
   (its recovery log), its RSS once ready, and (N <= --check-state-max) every aggregate's
   state checked through /tables.

The machine is shared and noisy: compare within a run (the ratios printed, restart time over
the same run's empty start, slopes over N), not against another run's seconds. The broker
is the embedded Tansu, which never compacts: changelog figures are bytes written, which a
compacted Kafka topic would shrink towards the latest-record figure. Writes
benchmarks/results/scaling-<date>[-tag].json (after each row) and .txt; worker logs go to
.pytest_cache/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shlex
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.changelog_stats import SUFFIX, changelog_stats
from benchmarks.measure import RESULTS, ROOT, ints, make_event, proc_cpu, produce_all, report_header, scrape
from benchmarks.scaling_report import per_aggregate, recovery_from_log, report_lines, row_summary
from tests.harness import LOGS, Deployment, Worker, metric_value, start_redis
from workers.kafka.embedded import start_broker
from workers.settings import env_names

STORE_ENV = "SEQGUARD_STORE"


# --------------------------------------------------------------------------- the process


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process in bytes, from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return {"rss_bytes": out["VmRSS"], "peak_rss_bytes": out["VmHWM"]}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def log_lines(worker: Worker) -> list[str]:
    return worker.log_path.read_text(errors="replace").splitlines()


def warnings_in(worker: Worker) -> int:
    return sum(1 for line in log_lines(worker) if '"level":"warning"' in line or '"level":"error"' in line)


async def start_until_ready(deployment: Deployment, label: str, timeout: float) -> tuple[Worker, dict[str, Any]]:
    """Start a worker; time from just before its process starts to the first /livez and /readyz 200."""
    t0 = time.monotonic()
    worker = Worker(deployment, label=label)
    live = None
    while True:
        now = time.monotonic() - t0
        if worker.proc.poll() is not None:
            raise RuntimeError(f"{label}: worker exited with {worker.proc.returncode}; {worker.log_path}")
        if now > timeout:
            worker.kill()
            raise TimeoutError(f"{label}: not ready after {timeout} s; {worker.log_path}")
        try:
            if live is None and worker.get("/livez")[0] == 200:
                live = now
            if live is not None and worker.get("/readyz")[0] == 200:
                ready = time.monotonic() - t0
                break
        except OSError:
            pass
        # 50 ms at first, 0.5 s after 45 s: a long recovery's event loop is not kept busy answering
        await asyncio.sleep(min(0.5, 0.05 + now / 100))
    return worker, {"live_s": round(live, 3), "ready_s": round(ready, 3), "cpu_s": proc_cpu(worker.proc.pid)}


async def settled_memory(worker: Worker, settle: float) -> dict[str, int]:
    """RSS after ``settle`` seconds of nothing to do (timers and the last commits have run)."""
    await asyncio.sleep(settle)
    return proc_memory(worker.proc.pid)


def stop(worker: Worker, how: str) -> dict[str, Any]:
    t0 = time.monotonic()
    if how == "kill":
        worker.kill()
    else:
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(120)
    return {"signal": how, "exit_s": round(time.monotonic() - t0, 2), "exit_code": worker.proc.returncode}


# --------------------------------------------------------------------------- workload and apply


async def preload(bootstrap: str, topic: str, n: int, per_aggregate: int, size: int, chunk: int = 50_000) -> float:
    """Round r gives every aggregate its sequence r, in order. Built and sent a chunk at a time:
    N = 1M must not hold millions of records in this process."""
    width = len(str(max(1, n - 1)))
    names = [f"agg-{a:0{width}d}" for a in range(n)]
    seconds = 0.0
    total = n * per_aggregate
    for start in range(0, total, chunk):
        records = [make_event(names[i % n], i // n + 1, size) for i in range(start, min(total, start + chunk))]
        seconds += await produce_all(bootstrap, topic, records)
    return seconds


async def apply_all(worker: Worker, events: int, poll: float, stall: float) -> dict[str, Any]:
    """Poll /metrics from readiness until ``events`` are applied; the rate from the first nonzero
    sample to the last change (the worker may start applying before it is ready)."""
    first = last = None
    applied = -1.0
    t0 = time.monotonic()
    while True:
        if worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}; {worker.log_path}")
        text = scrape(worker)
        now = time.monotonic()
        if text is not None:
            value = metric_value(text, "seqguard_events_applied_total")
            if value > 0 and first is None:
                first = (now, value, proc_cpu(worker.proc.pid))
            if value != applied:
                applied, last = value, (now, value, proc_cpu(worker.proc.pid))
            if applied >= events:
                break
        if now - (last[0] if last else t0) > stall:
            raise TimeoutError(f"no progress for {stall} s at {applied:.0f}/{events} applied; {worker.log_path}")
        await asyncio.sleep(poll)
    assert first is not None and last is not None
    span = max(1e-9, last[0] - first[0])
    return {
        "seconds_after_ready": round(last[0] - t0, 2),
        # None when the first sample already saw (nearly) everything applied: no rate to tell
        "events_per_s": round((last[1] - first[1]) / span) if span >= 1.0 else None,
        "worker_cpu_s": round(last[2], 2),
        "worker_cpu_us_per_event": round(1e6 * (last[2] - first[2]) / max(1.0, last[1] - first[1]), 1),
    }


# --------------------------------------------------------------------------- changelog and state


async def changelog_bytes(bootstrap: str, app_id: str, limit: float = 600.0) -> int:
    """Key + value bytes of every record on the app's changelogs (tombstones count their key),
    read to the fetch high-water marks (end_offsets is a batch short on Tansu)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    total = 0
    try:
        topics = [t for t in await consumer.topics() if t.startswith(f"{app_id}-") and t.endswith(SUFFIX)]
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            return 0
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
            total += sum(len(m.key or b"") + len(m.value or b"") for msgs in batch.values() for m in msgs)
            behind = 0
            for tp in tps:
                high = consumer.highwater(tp)
                behind += high is None or await consumer.position(tp) < high
            if not behind:
                break
        return total
    finally:
        await consumer.stop()


def check_state(worker: Worker, n: int, per_aggregate: int) -> dict[str, Any]:
    """Every aggregate recovered, each waiting for its next sequence (/tables, SEQGUARD_STATE_DUMP)."""
    try:
        state = worker.state()
    except (OSError, AssertionError) as exc:  # a page too slow or refused: not a wrong state
        return {"ok": None, "error": f"{type(exc).__name__}: {exc}"}
    wrong = sum(1 for view in state.values() if not view or view["n"] != per_aggregate + 1)
    return {"aggregates": len(state), "wrong": wrong, "ok": len(state) == n and wrong == 0}


# --------------------------------------------------------------------------- one row


async def restart(
    args: argparse.Namespace, deployment: Deployment, n: int, stopped: dict[str, Any]
) -> tuple[Worker, dict[str, Any]]:
    """Start a worker on the data dir a worker ``stopped`` left; measure it once ready."""
    how = stopped["signal"]
    worker, start = await start_until_ready(deployment, f"restart-{how}", args.ready_timeout)
    result: dict[str, Any] = {"previous_stop": stopped, **start}
    result.update(await settled_memory(worker, args.settle))
    result["recovery"] = recovery_from_log(log_lines(worker))
    if n <= args.check_state_max:
        result["state_check"] = check_state(worker, n, args.events_per_aggregate)
    return worker, result


async def run_row(args: argparse.Namespace, redis_url: str, row: dict[str, Any], date: str) -> None:
    """Measure one (store, N) into ``row``; what was measured stays there if a step fails."""
    store, n = row["store"], row["aggregates"]
    row["events"] = n * args.events_per_aggregate
    broker = start_broker(log_path=str(LOGS / f"scaling-tansu-{date}-{store}-{n}.log"))
    extra = {"SEQGUARD_PARTITIONS": str(args.partitions), "SEQGUARD_DOMAINS": "", "SEQGUARD_LOG_LEVEL": "info"}
    # One identity for every start: a RocksDB store keeps its files under the worker's id
    # (else its web port, which the harness picks anew for each process).
    extra["SEQGUARD_WORKER_ID"] = "scaling"
    if args.pass_store:
        extra[STORE_ENV] = store
    deployment = Deployment(broker.url, redis_url, extra=extra)
    data_dir = Path(deployment.env()["SEQGUARD_DATA_DIR"])
    workers: list[Worker] = []
    try:
        await deployment.create_topics()
        settings = deployment.settings()
        worker, empty = await start_until_ready(deployment, "empty", args.ready_timeout)
        workers.append(worker)
        row["empty_start"] = {**empty, **await settled_memory(worker, args.settle)}
        stop(worker, "term")

        row["preload_s"] = round(
            await preload(broker.bootstrap, settings.input_topic, n, args.events_per_aggregate, args.size), 2
        )
        worker, start = await start_until_ready(deployment, "apply", args.ready_timeout)
        workers.append(worker)
        row["apply"] = {"start": start, **await apply_all(worker, row["events"], args.poll, args.stall_seconds)}
        row["apply"].update(await settled_memory(worker, args.settle))

        stopped = stop(worker, "term")
        row["changelog"] = await changelog_stats(broker.bootstrap, settings.app_id, row["events"])
        row["changelog_bytes_written"] = await changelog_bytes(broker.bootstrap, settings.app_id)
        row["data_dir_bytes"] = dir_bytes(data_dir)
        row["restarts"] = {}
        for how in ("term", "kill") if args.kill_restart else ("term",):
            worker, row["restarts"][how] = await restart(args, deployment, n, stopped)
            workers.append(worker)
            stopped = stop(worker, "kill" if how == "term" else "term")

        row["broker_rss_bytes"] = proc_memory(broker.process.pid)["rss_bytes"]
        row["worker_log_warnings"] = {w.log_path.name: warnings_in(w) for w in workers}
        row["per_aggregate"] = per_aggregate(row)
    finally:
        for w in workers:
            w.kill()
        broker.stop()
        if not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------- report


def reproduce_command(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python", "-m", "benchmarks.scaling", "--aggregates", ",".join(map(str, args.aggregates))]
    parts += ["--stores", ",".join(args.stores), "--events-per-aggregate", str(args.events_per_aggregate)]
    parts += ["--size", str(args.size), "--partitions", str(args.partitions)]
    parts += [] if args.kill_restart else ["--no-kill-restart"]
    parts += ["--tag", args.tag] if args.tag else []
    return f"cd {ROOT} && " + shlex.join(parts)


def write(report: dict[str, Any], stem: str, text: str | None = None) -> None:
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    if text is not None:
        (RESULTS / f"{stem}.txt").write_text(text + "\n")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    date = dt.datetime.now().strftime("%Y-%m-%d") + (f"-{args.tag}" if args.tag else "")
    stem = f"scaling-{date}"
    report: dict[str, Any] = report_header(reproduce_command(args)) | {
        "workload": {k: getattr(args, k) for k in ("events_per_aggregate", "size", "partitions")},
        "store_env": STORE_ENV if args.pass_store else None,
        "rows": [],
        "json_path": str((RESULTS / f"{stem}.json").relative_to(ROOT)),
    }
    redis_proc, redis_url = start_redis()
    try:
        for n in args.aggregates:
            for store in args.stores:
                print(f"N = {n:,} aggregates, store {store} ...", flush=True)
                row: dict[str, Any] = {"store": store, "aggregates": n}
                try:
                    await run_row(args, redis_url, row, date)
                    print(row_summary(row), flush=True)
                except Exception as exc:  # a failed row is reported; the others still run
                    row["error"] = f"{type(exc).__name__}: {exc}"
                    print(f"  ! {row['error']}", flush=True)
                    traceback.print_exc()
                report["rows"].append(row)
                report["environment"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]  # noqa: ASYNC240
                write(report, stem)
    finally:
        redis_proc.kill()
        redis_proc.wait(10)
    write(report, stem, "\n".join(report_lines(report)))
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--aggregates", type=ints, default=[10_000, 100_000, 1_000_000], help="sizes N, comma-separated")
    p.add_argument(
        "--stores",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"values of {STORE_ENV}, comma-separated (default: memory,rocksdb; memory while the setting is missing)",
    )
    p.add_argument("--events-per-aggregate", type=int, default=2)
    p.add_argument("--size", type=int, default=200, help="bytes per input record value")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--settle", type=float, default=3.0, help="seconds idle before reading a worker's RSS")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between /metrics polls while applying")
    p.add_argument("--stall-seconds", type=float, default=120.0, help="give a row up after this long without progress")
    p.add_argument("--ready-timeout", type=float, default=3600.0, help="longest start, recovery included (s)")
    p.add_argument("--check-state-max", type=int, default=100_000, help="check /tables after restarts up to this N")
    p.add_argument("--kill-restart", action=argparse.BooleanOptionalAction, default=True, help="restart after SIGKILL")
    p.add_argument("--keep-data", action="store_true", help="keep the workers' data dirs")
    p.add_argument("--tag", default="", help="suffix of the result files: scaling-<date>-<tag>.json")
    args = p.parse_args(argv)
    # Workers refuse unknown SEQGUARD_ names: pass the store only once the setting exists.
    args.pass_store = STORE_ENV in env_names()
    if args.stores is None:
        args.stores = ["memory", "rocksdb"] if args.pass_store else ["memory"]
    if not args.pass_store and args.stores != ["memory"]:
        p.error(f"{STORE_ENV} is not a seqguard setting yet: only --stores memory (Faust's memory store) can run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    print("\n".join(report_lines(report)))
    return 0 if all("error" not in r for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
