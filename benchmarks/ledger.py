"""What the effect ledger and PostgreSQL projections cost, in one run.

    .venv/bin/python -m benchmarks.ledger [--effects 20000] [--batch 500] [--events 50000] [--aggregates 5000] ...

(1) Ledger micro-benchmark, one asyncio client (redis-py, configured as the worker configures
    it: workers.dependencies.redis_client) against a redis-server this benchmark starts
    (REDIS_URL if set), N effects whose fn increments a Python counter:
    (a) ``Ledger.once`` one key at a time: a claim and a done mark, 2 round trips per effect;
    (b) ``Ledger.once_each`` in batches of --batch keys: claims pipelined, done marks pipelined;
    (c) ``Ledger.once`` again over (a)'s keys, all done: every effect skipped;
    (d) ``Ledger.once_each`` again over (b)'s keys, all done (keys seen before fall back to once);
    and for reference: PING (one bare round trip) and ``Ledger.entry`` (one EVALSHA of the
    ledger's compare-and-set script, read only), and (e) ``Projections.once`` one key at a time
    against the private PostgreSQL (its transaction with the idempotency row, and one INSERT).
    Per phase: effects/s, wall µs per effect, round trips per effect (requests the client
    wrote: every pipeline counts one, plus the SCRIPT EXISTS that redis-py sends before a
    pipeline holding a script), the client's CPU, redis-server's CPU (/proc) and the time Redis
    spent inside commands (INFO commandstats), per effect. Median of --repeats runs.
(2) Worker throughput: a ``seqguard worker`` (benchmarks/worker_rate.py's run_seqguard: the rate
    from its /metrics) over the same pre-loaded input, --events events in order (no duplicate,
    none ahead of its turn) over --aggregates aggregates, with SEQGUARD_DOMAINS=
    benchmarks.ledger_domain and BENCH_LEDGER_MODE = (i) noop: a handler that does nothing,
    (ii) once: one ctx.once per event, (iii) project: one ctx.project per event (an INSERT, with
    a private PostgreSQL: initdb + pg_ctl, or POSTGRES_URL if set), (iv) both. A fresh app id,
    changelogs and Redis/PostgreSQL namespace per mode. After each: the output topic holds
    every event, and the ledger (done entries) and PostgreSQL (idempotency rows and projected
    rows) hold one per event.

Private servers are built for speed, not durability: Redis without persistence, PostgreSQL
with fsync=off and synchronous_commit=off (tests/pg.py). A durable PostgreSQL pays a WAL flush
per commit on top. Writes benchmarks/results/ledger-<date>[-<tag>].json; worker and broker logs
go to .pytest_cache/logs/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import hashlib
import json
import os
import secrets
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import redis as redis_pkg
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from benchmarks import ledger_domain as domain
from benchmarks import worker_rate
from benchmarks.measure import (
    CLK_TCK,
    EVENT_TYPE,
    RESULTS,
    ROOT,
    Workload,
    build_workload,
    environment,
    proc_cpu,
    produce_all,
)
from benchmarks.worker_rate import count_records
from tests.harness import LOGS, Deployment, start_redis
from workers.dependencies import redis_client
from workers.envelope import canonical_data_id
from workers.kafka.embedded import start_broker
from workers.ledger.postgres import Projections
from workers.ledger.redis import Ledger
from workers.settings import Settings

assert domain.EVENT_TYPE == EVENT_TYPE, "the domain must handle the events benchmarks.measure builds"

MODE_LABELS = {
    "noop": "(i)   no-op handler (baseline)",
    "once": "(ii)  ctx.once per event",
    "project": "(iii) ctx.project per event",
    "both": "(iv)  ctx.once + ctx.project",
}


# --------------------------------------------------------------------------- accounting


class CountingConnection(Connection):
    """A redis-py connection that counts the requests it writes: a command, a pipeline or a
    SCRIPT EXISTS is one write, then one wait for the answer (one round trip)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of a server and its children, live ones and reaped ones (PostgreSQL's backend
    of a connection that closed is reaped by the postmaster: counted in its cutime/cstime)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
    return own + sum(proc_cpu(int(c)) for c in children)


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


# --------------------------------------------------------------------------- (1) micro-benchmark


class Micro:
    """One client, one ledger, and what a phase costs."""

    def __init__(self, redis: Redis, redis_pid: int | None, ledger: Ledger) -> None:
        self.redis = redis
        self.redis_pid = redis_pid
        self.ledger = ledger
        self.ran = 0
        self.server_stats = True

    async def effect(self) -> None:
        self.ran += 1

    async def _reset(self) -> None:
        if self.server_stats:
            try:
                await self.redis.config_resetstat()
            except redis_pkg.exceptions.ResponseError:  # CONFIG disabled on a shared server
                self.server_stats = False

    async def _server_usec(self) -> tuple[float, dict[str, int]]:
        if not self.server_stats:
            return float("nan"), {}
        stats = await self.redis.info("commandstats")
        usec, calls = 0.0, {}
        for name, s in stats.items():
            command = name.removeprefix("cmdstat_")
            if command in ("config|resetstat", "info"):
                continue
            usec += float(s["usec"])
            calls[command] = int(s["calls"])
        return usec, calls

    async def phase(self, name: str, n: int, rts_expected: float, body: Callable[[], Awaitable[int]]) -> dict[str, Any]:
        await self._reset()
        gc.collect()
        self.ran = 0
        CountingConnection.sends = 0
        srv0, cpu0, t0 = proc_cpu(self.redis_pid) if self.redis_pid else 0.0, time.process_time(), time.perf_counter()
        returned = await body()
        t1, cpu1 = time.perf_counter(), time.process_time()
        srv1 = proc_cpu(self.redis_pid) if self.redis_pid else 0.0
        sends = CountingConnection.sends
        usec, calls = await self._server_usec()
        wall = t1 - t0
        return {
            "phase": name,
            "effects": n,
            "seconds": round(wall, 3),
            "effects_per_s": round(n / wall),
            "us_per_effect": round(1e6 * wall / n, 1),
            "round_trips_per_effect": round(sends / n, 4),
            "round_trips_per_effect_expected": rts_expected,
            "client_cpu_us_per_effect": round(1e6 * (cpu1 - cpu0) / n, 1),
            "redis_cpu_us_per_effect": round(1e6 * (srv1 - srv0) / n, 1) if self.redis_pid else None,
            "redis_command_us_per_effect": round(usec / n, 2) if usec == usec else None,
            "redis_commands": calls,
            "fn_ran": self.ran,
            "returned": returned,
        }


def keys_and_fingerprints(n: int, tag: str) -> list[tuple[str, str]]:
    """Keys shaped as the worker's (source, 0x1f, event id) and SHA-256 fingerprints, as ctx.once's."""
    return [(f"bench\x1f{tag}-agg-{i % 5000:05d}-{i}", canonical_data_id({"n": i, "tag": tag})) for i in range(n)]


async def micro_round(m: Micro, n: int, batch: int, tag: str) -> list[dict[str, Any]]:
    """Every phase once, on fresh keys (``tag``)."""
    ledger, fn = m.ledger, m.effect
    once_keys = keys_and_fingerprints(n, f"{tag}o")
    each_keys = keys_and_fingerprints(n, f"{tag}e")
    once_effect, each_effect = f"bench.once.{tag}", f"bench.each.{tag}"

    async def ping() -> int:
        for _ in range(n):
            await m.redis.ping()
        return n

    async def entry() -> int:
        found = 0
        for key, _ in once_keys:
            found += await ledger.entry(once_effect, key) is not None
        return found

    async def once() -> int:
        ran = 0
        for key, fp in once_keys:
            ran += await ledger.once(once_effect, fn, key=key, fingerprint=fp)
        return ran

    async def once_each() -> int:
        ran = 0
        for i in range(0, n, batch):
            ran += await ledger.once_each(each_effect, [(k, fp, fn) for k, fp in each_keys[i : i + batch]])
        return ran

    batches = -(-n // batch)
    return [
        await m.phase("ping", n, 1, ping),
        await m.phase("entry", n, 1, entry),
        await m.phase("once", n, 2, once),
        await m.phase("once_each", n, round(2 * batches / n, 4), once_each),
        await m.phase("once_skip", n, 1, once),
        await m.phase("once_each_skip", n, round(1 + batches / n, 4), once_each),
    ]


def check_micro(row: dict[str, Any]) -> list[str]:
    runs = row["phase"] in ("once", "once_each")
    want = row["effects"] if runs else 0
    problems = []
    if row["phase"] in ("once", "once_each", "once_skip", "once_each_skip") and (
        row["fn_ran"] != want or row["returned"] != want
    ):
        problems.append(f"{row['phase']}: fn ran {row['fn_ran']}, returned {row['returned']}, expected {want}")
    if row["phase"] == "entry" and row["returned"] != 0:
        problems.append(f"entry found {row['returned']} entries before any effect ran")
    return problems


async def micro_projections(pg_url: str, pg_pid: int | None, n: int) -> dict[str, Any]:
    """(e) Projections.once, one key at a time: BEGIN, the idempotency INSERT, fn's INSERT, COMMIT."""
    run = f"micro-{secrets.token_hex(4)}"
    projections = Projections(pg_url, namespace=f"{run}:", ttl=86_400.0, schema=domain.SCHEMA)
    insert = f"INSERT INTO {domain.TABLE} (run, aggregate_id, sequence) VALUES ($1, $2, $3)"  # noqa: S608
    await projections.start()
    try:

        def write_row(i: int) -> Callable[[Any], Awaitable[Any]]:
            async def write(conn: Any) -> None:
                await conn.execute(insert, run, f"agg-{i % 5000:05d}", i)

            return write

        writes = [write_row(i) for i in range(n)]
        gc.collect()
        srv0, cpu0, t0 = tree_cpu(pg_pid), time.process_time(), time.perf_counter()
        ran = 0
        for i, write in enumerate(writes):
            ran += await projections.once("bench.micro", f"bench\x1f{run}-{i}", write)
        t1, cpu1, srv1 = time.perf_counter(), time.process_time(), tree_cpu(pg_pid)
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetchval(f"SELECT count(*) FROM {domain.TABLE} WHERE run = $1", run)  # noqa: S608
        finally:
            await conn.close()
    finally:
        await projections.close()
    wall = t1 - t0
    return {
        "phase": "projections_once",
        "effects": n,
        "seconds": round(wall, 3),
        "effects_per_s": round(n / wall),
        "us_per_effect": round(1e6 * wall / n, 1),
        "client_cpu_us_per_effect": round(1e6 * (cpu1 - cpu0) / n, 1),
        "postgres_cpu_us_per_effect": round(1e6 * (srv1 - srv0) / n, 1) if pg_pid else None,
        "returned": ran,
        "rows": rows,
        "ok": ran == n and rows == n,
    }


async def run_micro(args: argparse.Namespace, redis_url: str, redis_pid: int | None) -> dict[str, Any]:
    settings = Settings(redis_url=redis_url)  # type: ignore[arg-type]
    redis = redis_client(settings)
    redis.connection_pool.connection_class = CountingConnection
    ns = f"bench{secrets.token_hex(3)}:"
    ledger = Ledger(
        redis, namespace=ns, owner=f"bench/{os.getpid()}", ttl=settings.effect_ttl, lease=settings.effect_lease
    )
    m = Micro(redis, redis_pid, ledger)
    runs: list[list[dict[str, Any]]] = []
    problems: list[str] = []
    try:
        await redis.ping()  # connect (and the client's hello) outside the measurements
        await ledger.entry("warm", "up")  # loads the script (EVALSHA, NOSCRIPT, EVAL) once
        for r in range(args.repeats):
            rows = await micro_round(m, args.effects, args.batch, f"r{r}")
            runs.append(rows)
            for row in rows:
                problems += check_micro(row)
            print(
                f"  run {r + 1}/{args.repeats}: "
                + ", ".join(f"{row['phase']} {row['us_per_effect']} µs" for row in rows),
                flush=True,
            )
        keys = [k async for k in redis.scan_iter(match=f"{ns}*", count=5000)]
        for i in range(0, len(keys), 5000):  # leave a shared REDIS_URL as it was
            await redis.unlink(*keys[i : i + 5000])
    finally:
        await redis.aclose()
    median: dict[str, dict[str, Any]] = {}
    for i, first in enumerate(runs[0]):
        by_phase = sorted((rows[i] for rows in runs), key=lambda row: row["us_per_effect"])
        median[first["phase"]] = by_phase[len(by_phase) // 2]
    once, each = median["once"], median["once_each"]
    return {
        "effects": args.effects,
        "batch": args.batch,
        "repeats": args.repeats,
        "median": median,
        "runs": runs,
        "once_each_over_once": round(each["effects_per_s"] / once["effects_per_s"], 2),
        "problems": problems,
        "ok": not problems,
    }


# --------------------------------------------------------------------------- (2) worker throughput


@contextlib.contextmanager
def worker_overrides(extra: dict[str, str]) -> Iterator[None]:
    """worker_rate.run_seqguard starts its worker with worker_env(...), looked up in
    benchmarks.worker_rate (which imports it from benchmarks.measure), whose
    SEQGUARD_DOMAINS="" overrides a deployment's settings: add this mode's on top."""
    base = worker_rate.worker_env
    worker_rate.worker_env = lambda args, wait: {**base(args, wait), **extra}
    try:
        yield
    finally:
        worker_rate.worker_env = base


async def ledger_entries(redis_url: str, prefix: str) -> dict[str, int]:
    """The worker's ledger entries by state."""
    redis = Redis.from_url(redis_url)
    states: dict[str, int] = {}
    try:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}ledger:*", count=5000)]
        for i in range(0, len(keys), 2000):
            async with redis.pipeline(transaction=False) as pipe:
                for k in keys[i : i + 2000]:
                    pipe.hget(k, "state")
                for s in await pipe.execute():
                    state = s.decode() if s else "missing"
                    states[state] = states.get(state, 0) + 1
    finally:
        await redis.aclose()
    return states


async def postgres_rows(pg_url: str, namespace: str, run: str) -> dict[str, int]:
    conn = await asyncpg.connect(pg_url)
    try:
        applied = await conn.fetchval(
            "SELECT count(*) FROM seqguard_applied WHERE namespace = $1 AND effect = $2", namespace, domain.PROJECTION
        )
        rows = await conn.fetchval(f"SELECT count(*) FROM {domain.TABLE} WHERE run = $1", run)  # noqa: S608
    finally:
        await conn.close()
    return {"idempotency_rows": applied, "projected_rows": rows}


async def run_mode(
    args: argparse.Namespace,
    broker: Any,
    redis_url: str,
    redis_pid: int | None,
    pg: tuple[str, int | None],
    input_topic: str,
    workload: Workload,
    mode: str,
) -> dict[str, Any]:
    pg_url, pg_pid = pg
    deployment = Deployment(
        broker.url,
        redis_url,
        extra={"SEQGUARD_PARTITIONS": str(args.partitions), "SEQGUARD_INPUT_TOPIC": input_topic},
    )
    await deployment.create_topics()
    settings = deployment.settings()
    extra = {"SEQGUARD_DOMAINS": "benchmarks.ledger_domain", domain.MODE_ENV: mode}
    if mode in ("project", "both"):
        extra["SEQGUARD_POSTGRES_URL"] = pg_url
    redis0, pg0 = proc_cpu(redis_pid) if redis_pid else 0.0, tree_cpu(pg_pid)
    with worker_overrides(extra):
        result = await worker_rate.run_seqguard(args, broker, deployment, workload, f"ledger-{mode}")
    redis1, pg1 = proc_cpu(redis_pid) if redis_pid else 0.0, tree_cpu(pg_pid)
    n = workload.unique
    # The worker's counters move once per batch, so the first sample already holds a whole
    # batch processed before the timing starts: the rate leaves it out (run_seqguard's
    # "conservative" figure), as worker_cpu_us_per_event does.
    result["rate"] = result["events_per_s_conservative"]
    if not result["rate"]:
        raise RuntimeError(
            f"all {result['received']:,} events were counted at the first sample (one batch): too few to time; "
            "raise --events"
        )
    result["mode"] = mode
    result["env"] = {k: ("<postgres url>" if k == "SEQGUARD_POSTGRES_URL" else v) for k, v in extra.items()}
    result["app_id"] = settings.app_id
    # Whole run (the worker's start-up included): an upper bound per event.
    result["redis_cpu_us_per_event"] = round(1e6 * (redis1 - redis0) / n, 1) if redis_pid else None
    result["postgres_cpu_us_per_event"] = round(1e6 * (pg1 - pg0) / n, 1) if pg_pid else None
    out = await count_records(broker.bootstrap, [settings.output_topic], args.partitions)
    check: dict[str, Any] = {"output_records": out[settings.output_topic]}
    ok = check["output_records"] == n
    if mode in ("once", "both"):
        check["ledger_entries"] = await ledger_entries(redis_url, settings.ledger_prefix)
        ok = ok and check["ledger_entries"] == {"done": n}
    if mode in ("project", "both"):
        check.update(await postgres_rows(pg_url, settings.ledger_prefix, settings.app_id))
        ok = ok and check["idempotency_rows"] == n and check["projected_rows"] == n
    check["ok"] = ok
    result["check"] = check
    return result


def relative(results: dict[str, dict[str, Any]]) -> None:
    base = results.get("noop")
    if base is None or "error" in base:
        return
    for r in results.values():
        if "error" in r:
            continue
        r["vs_noop"] = round(r["rate"] / base["rate"], 3)
        r["added_wall_us_per_event"] = round(1e6 / r["rate"] - 1e6 / base["rate"], 1)
        r["added_worker_cpu_us_per_event"] = round(r["worker_cpu_us_per_event"] - base["worker_cpu_us_per_event"], 1)


# --------------------------------------------------------------------------- main


def reproduce_command(args: argparse.Namespace) -> str:
    options = {
        "--effects": args.effects,
        "--batch": args.batch,
        "--repeats": args.repeats,
        "--pg-effects": args.pg_effects,
        "--events": args.events,
        "--aggregates": args.aggregates,
        "--partitions": args.partitions,
        "--size": args.size,
        "--seed": args.seed,
        "--modes": ",".join(args.modes),
        "--log-level": args.log_level,
    }
    if args.tag:
        options["--tag"] = args.tag
    parts = [".venv/bin/python", "-m", "benchmarks.ledger"]
    for flag, value in options.items():
        parts += [flag, str(value)]
    parts += ["--no-micro"] if args.no_micro else []
    parts += ["--no-workers"] if args.no_workers else []
    return f"cd {ROOT} && " + shlex.join(parts)


def code_digest() -> str:
    """SHA-256 of the worker's sources (workers/, tables/): the workers this benchmark starts
    import them from disk, so a change during the run would mix two versions."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("workers/**/*.py"), *ROOT.glob("tables/**/*.py")]):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def versions() -> dict[str, Any]:
    try:
        import hiredis  # noqa: F401

        parser = "hiredis"
    except ImportError:
        parser = "pure Python (no hiredis)"
    return {"redis_py": redis_pkg.__version__, "redis_py_parser": parser, "asyncpg": asyncpg.__version__}


@contextlib.asynccontextmanager
async def postgres() -> Any:
    """(url, postmaster pid or None, version): POSTGRES_URL, else a private cluster."""
    server = None
    if os.environ.get("POSTGRES_URL"):
        url, pid = os.environ["POSTGRES_URL"], None
    else:
        from tests.pg import PrivatePostgres

        server = PrivatePostgres()
        url, pid = server.url, postmaster_pid(server.data)
    try:
        conn = await asyncpg.connect(url)
        try:
            version = await conn.fetchval("SHOW server_version")
            sync = await conn.fetchval("SHOW synchronous_commit")
            fsync = await conn.fetchval("SHOW fsync")
        finally:
            await conn.close()
        yield url, pid, {"version": version, "synchronous_commit": sync, "fsync": fsync, "private": server is not None}
    finally:
        if server is not None:
            server.destroy()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    date = dt.datetime.now().strftime("%Y-%m-%d") + (f"-{args.tag}" if args.tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": reproduce_command(args),
        "environment": {**environment(), **versions(), "code_digest_start": code_digest()},
    }
    redis_proc = None
    if os.environ.get("REDIS_URL"):
        redis_url = os.environ["REDIS_URL"]
    else:
        redis_proc, redis_url = start_redis()
    redis_pid = redis_proc.pid if redis_proc is not None else None
    broker = None
    try:
        probe = Redis.from_url(redis_url)
        info = await probe.info("server")
        await probe.aclose()
        report["environment"]["redis"] = {"version": info["redis_version"], "private": redis_proc is not None}
        async with postgres() as (pg_url, pg_pid, pg_info):
            report["environment"]["postgres"] = pg_info
            if not args.no_micro:
                print(
                    f"(1) ledger micro-benchmark: {args.effects:,} effects x {args.repeats} runs, "
                    f"batches of {args.batch} ...",
                    flush=True,
                )
                report["micro"] = await run_micro(args, redis_url, redis_pid)
                print(f"(e) Projections.once, {args.pg_effects:,} effects ...", flush=True)
                report["micro"]["projections_once"] = await micro_projections(pg_url, pg_pid, args.pg_effects)
            if not args.no_workers:
                broker = start_broker(log_path=str(LOGS / f"bench-ledger-tansu-{date}.log"))
                report["workers"] = await run_workers(args, broker, redis_url, redis_pid, (pg_url, pg_pid))
    finally:
        if broker is not None:
            broker.stop()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait(10)
    report["environment"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]  # noqa: ASYNC240
    report["environment"]["code_digest_end"] = code_digest()
    out = RESULTS / f"ledger-{date}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    report["json_path"] = str(out.relative_to(ROOT))
    return report


async def run_workers(
    args: argparse.Namespace, broker: Any, redis_url: str, redis_pid: int | None, pg: tuple[str, int | None]
) -> dict[str, Any]:
    first = Deployment(broker.url, redis_url, extra={"SEQGUARD_PARTITIONS": str(args.partitions)})
    await first.create_topics()
    input_topic = first.settings().input_topic
    workload = build_workload(args.events, args.aggregates, 0.0, 0.0, args.size, args.seed)
    secs = await produce_all(broker.bootstrap, input_topic, workload.records)
    print(
        f"(2) worker throughput: pre-loaded {len(workload.records):,} events in order "
        f"({args.aggregates:,} aggregates, {args.partitions} partitions) in {secs:.1f} s",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for mode in args.modes:
        try:
            r = await run_mode(args, broker, redis_url, redis_pid, pg, input_topic, workload, mode)
        except (AssertionError, RuntimeError) as exc:  # a worker that processed nothing, or exited
            print(f"  {MODE_LABELS[mode]}: FAILED: {str(exc)[:300]}", flush=True)
            results[mode] = {"mode": mode, "error": str(exc)[:2000], "check": {"ok": False}}
            continue
        results[mode] = r
        print(
            f"  {MODE_LABELS[mode]}: {r['rate']:,} events/s over {r['seconds']} s, "
            f"worker {r['worker_cpu_us_per_event']} µs CPU/event; check {'OK' if r['check']['ok'] else 'FAILED'}",
            flush=True,
        )
    relative(results)
    return {
        "workload": {
            "events": len(workload.records),
            "aggregates": len(workload.per_aggregate),
            "partitions": args.partitions,
            "value_bytes": args.size,
            "in_order": True,
            "duplicates": workload.duplicates,
            "preload_seconds": round(secs, 2),
        },
        "modes": results,
        "ok": all(r["check"]["ok"] for r in results.values()),
    }


# --------------------------------------------------------------------------- report


MICRO_LABELS = {
    "ping": "    PING (one bare round trip)",
    "entry": "    Ledger.entry (one EVALSHA, read)",
    "once": "(a) Ledger.once, one key at a time",
    "once_each": "(b) Ledger.once_each, batches",
    "once_skip": "(c) Ledger.once, all done (skip)",
    "once_each_skip": "(d) Ledger.once_each, all done",
}


def _num(x: Any, fmt: str = ",") -> str:
    return "-" if x is None else format(x, fmt)


def micro_lines(m: dict[str, Any]) -> list[str]:
    out = [
        f"(1) ledger micro-benchmark: {m['effects']:,} effects per phase, one client, median of {m['repeats']} runs",
        f"    {'':36} {'effects/s':>10} {'µs/effect':>10} {'RTs/eff':>8} {'client':>7} {'redis':>7} {'in cmds':>8}",
        f"    {'':36} {'':>10} {'(wall)':>10} {'':>8} {'CPU µs':>7} {'CPU µs':>7} {'µs':>8}",
    ]
    for phase, label in MICRO_LABELS.items():
        r = m["median"][phase]
        if phase in ("once_each", "once_each_skip"):
            label = f"{label} of {m['batch']}"
        out.append(
            f"{label:40} {r['effects_per_s']:>10,} {r['us_per_effect']:>10} {r['round_trips_per_effect']:>8} "
            f"{_num(r['client_cpu_us_per_effect']):>7} {_num(r['redis_cpu_us_per_effect']):>7} "
            f"{_num(r['redis_command_us_per_effect']):>8}"
        )
    p = m.get("projections_once")
    if p:
        out.append(
            f"{'(e) Projections.once, one at a time':40} {p['effects_per_s']:>10,} {p['us_per_effect']:>10} "
            f"{'-':>8} {_num(p['client_cpu_us_per_effect']):>7} {'pg ' + _num(p['postgres_cpu_us_per_effect']):>16}"
        )
    once, each = m["median"]["once"], m["median"]["once_each"]
    skip, ping = m["median"]["once_skip"], m["median"]["ping"]
    out += [
        f"    (b)/(a): once_each runs {m['once_each_over_once']}x the effects/s of once "
        f"({once['us_per_effect']} -> {each['us_per_effect']} µs per effect)",
        f"    (a) = {once['us_per_effect'] / ping['us_per_effect']:.1f} bare round trips; client CPU "
        f"{once['client_cpu_us_per_effect']} of its {once['us_per_effect']} µs, Redis inside commands "
        f"{_num(once['redis_command_us_per_effect'])} µs; (c) skip: {skip['us_per_effect']} µs",
        "    RTs/eff: requests written per effect, measured (a pipeline is one; redis-py adds a SCRIPT EXISTS",
        "    before each pipeline that holds a script). client CPU: this process; redis CPU: redis-server (/proc);",
        "    in cmds: time Redis spent executing commands (INFO commandstats).",
    ]
    if m["problems"]:
        out.append(f"    PROBLEMS: {m['problems']}")
    return out


def worker_lines(w: dict[str, Any]) -> list[str]:
    wl = w["workload"]
    out = [
        f"(2) worker throughput: {wl['events']:,} events in order, {wl['aggregates']:,} aggregates, "
        f"{wl['partitions']} partitions, {wl['value_bytes']} B; one seqguard worker per mode",
        f"    {'':32} {'events/s':>9} {'vs (i)':>7} {'+µs/event':>10} {'worker CPU':>11} {'+CPU':>6} "
        f"{'redis':>6} {'pg':>6}  check",
        f"    {'':32} {'':>9} {'':>7} {'(wall)':>10} {'µs/event':>11} {'µs':>6} {'µs/ev':>6} {'µs/ev':>6}",
    ]
    for mode, r in w["modes"].items():
        if "error" in r:
            out.append(f"{MODE_LABELS[mode]:36} FAILED: {r['error'][:200]}")
            continue
        c = r["check"]
        detail = [f"output {c['output_records']:,}"]
        if "ledger_entries" in c:
            detail.append(f"ledger {c['ledger_entries']}")
        if "projected_rows" in c:
            detail.append(f"pg rows {c['idempotency_rows']:,}+{c['projected_rows']:,}")
        out.append(
            f"{MODE_LABELS[mode]:36} {r['rate']:>9,} {_num(r.get('vs_noop'), '.3f'):>7} "
            f"{_num(r.get('added_wall_us_per_event')):>10} {r['worker_cpu_us_per_event']:>11} "
            f"{_num(r.get('added_worker_cpu_us_per_event')):>6} {_num(r['redis_cpu_us_per_event']):>6} "
            f"{_num(r['postgres_cpu_us_per_event']):>6}  {'OK' if c['ok'] else 'FAILED'}: {', '.join(detail)}"
        )
        out.append(
            f"{'':36} {r['applied']:,} events over {r['seconds']} s after the first batch's "
            f"{r['received_at_first_sample']:,}; CPU % of a core: worker {r['cpu_pct']['worker']}, broker "
            f"{r['cpu_pct']['broker']}, others {r['cpu_pct']['others']}; {r['metrics']['batches']:.0f} batches; "
            f"log {r['worker_log']['counts'] or 'clean'}"
        )
    out += [
        "    events/s: from the worker's /metrics, leaving out the events counted at the first sample (its",
        "    counters move once per batch: the first batch ran before the timing started).",
        "    +µs/event: 1e6/rate - 1e6/rate(i), the wall time each event's handler adds; +CPU: the same in",
        "    worker CPU. redis/pg: the server's CPU over the whole run (start-up included) per event.",
    ]
    return out


def report_lines(r: dict[str, Any]) -> list[str]:
    env = r["environment"]
    modified = ", workers/tables modified" if env["workers_or_tables_uncommitted_changes"] else ""
    load = f"{' '.join(env['loadavg_start'])} -> {' '.join(env['loadavg_end'])}"
    rd, pg = env["redis"], env.get("postgres", {})
    pg_text = (
        f"PostgreSQL {pg.get('version')} ({'private' if pg.get('private') else 'POSTGRES_URL'}: "
        f"fsync={pg.get('fsync')}, synchronous_commit={pg.get('synchronous_commit')})"
    )
    drift = env["code_digest_start"] != env["code_digest_end"]
    out = [
        "",
        "=" * 100,
        f"seqguard ledger cost  {r['date']}  (commit {env['git_commit']}{modified})",
        *(["WARNING: workers/ or tables/ changed on disk during the run: figures mix two versions"] if drift else []),
        f"machine: {env['cpus']} CPUs ({env['cpu_model']}), load {load}; SHARED AND NOISY:",
        "  repeat before trusting a difference < ~20%.",
        f"Redis {rd['version']} ({'private, no persistence' if rd['private'] else 'REDIS_URL'}); {pg_text}",
        f"python {env['python']}, redis-py {env['redis_py']} (parser: {env['redis_py_parser']}), "
        f"asyncpg {env['asyncpg']}, faust {env['faust']}; broker {env['broker']}",
        "-" * 100,
    ]
    if "micro" in r:
        out += micro_lines(r["micro"])
    if "workers" in r:
        out += worker_lines(r["workers"])
    out += ["-" * 100, f"JSON: {r['json_path']}", f"reproduce: {r['command']}", "=" * 100]
    return out


def words(text: str) -> list[str]:
    modes = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in modes if x not in domain.MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown modes {unknown}: {', '.join(domain.MODES)}")
    return modes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--effects", type=int, default=20_000, help="effects per micro-benchmark phase")
    p.add_argument("--batch", type=int, default=500, help="keys per Ledger.once_each call in (b) and (d)")
    p.add_argument("--repeats", type=int, default=3, help="micro-benchmark runs (the median is reported)")
    p.add_argument("--pg-effects", type=int, default=5_000, help="Projections.once calls in (e)")
    p.add_argument("--events", type=int, default=50_000, help="events per worker run")
    p.add_argument("--aggregates", type=int, default=5_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--size", type=int, default=300, help="bytes per record value")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--modes", type=words, default=list(domain.MODES), help="worker runs: noop,once,project,both")
    p.add_argument("--no-micro", action="store_true", help="skip (1)")
    p.add_argument("--no-workers", action="store_true", help="skip (2)")
    p.add_argument("--throughput-fetch-wait", type=int, default=500, help="SEQGUARD_FETCH_MAX_WAIT_MS of the workers")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between /metrics polls")
    p.add_argument("--stall-seconds", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=300.0, help="longest worker run in seconds")
    p.add_argument("--log-level", default="warning", help="SEQGUARD_LOG_LEVEL of the workers")
    p.add_argument("--tag", default="", help="suffix of the result file: ledger-<date>-<tag>.json")
    args = p.parse_args(argv)
    args.profile_rate = 100  # run_seqguard reads it (only under py-spy, which this benchmark does not use)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    report = asyncio.run(main_async(args))
    print("\n".join(report_lines(report)))
    print(f"(ran {time.monotonic() - started:.0f} s)")
    ok = report.get("micro", {}).get("ok", True) and report.get("workers", {}).get("ok", True)
    ok = ok and report.get("micro", {}).get("projections_once", {}).get("ok", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
