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
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.changelog_stats import changelog_stats, summary_lines
from benchmarks.latency import run_latency
from benchmarks.measure import (
    RESULTS,
    ROOT,
    CpuMark,
    assigned_consumer,
    build_workload,
    cpu_between,
    ints,
    produce_all,
    report_header,
)
from benchmarks.profile_summary import py_spy, summarize_profile
from benchmarks.throughput_report import report_lines
from benchmarks.worker_rate import count_records, run_seqguard, verify_output
from tests.harness import LOGS, Deployment, start_redis
from workers.kafka.embedded import start_broker
from workers.settings import Settings

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
    parts += [] if args.forwarder else ["--no-forwarder"]
    return f"cd {ROOT} && " + shlex.join(parts)



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
            # (c') after each (c): the same rate through a process that only forwards (the broker's floor).
            runs = [(rate, wait, False) for rate in args.latency_rates for wait in args.fetch_waits]
            if args.forwarder:
                runs = [run for rate in args.latency_rates for run in _with_forwarder(runs, rate)]
            for rate, wait, forwarder in runs:
                name = "(c') forwarder" if forwarder else "(c) seqguard"
                print(f"{name} latency at {rate:,}/s for {args.latency_seconds} s, fetch wait {wait} ms ...", flush=True)
                c = await run_latency(args, broker, redis_url, rate, wait, forwarder=forwarder)
                report["latency"].append(c)
                print(
                    f"  p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms ({c['measured_after_warmup']:,} events); "
                    f"{'forwarder' if forwarder else 'worker'} {c['cpu_pct']['worker']}% CPU, "
                    f"broker {c['cpu_pct']['broker']}%",
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


def _with_forwarder(runs: list[tuple[int, int, bool]], rate: int) -> list[tuple[int, int, bool]]:
    """The seqguard runs at ``rate``, then one forwarder run at the same rate and the default wait."""
    ours = [run for run in runs if run[0] == rate]
    return [*ours, (rate, ours[-1][1], True)] if ours else []


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
        "--forwarder",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="(c'): after each rate of (c), the same through a process that only forwards (the broker's floor)",
    )
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
