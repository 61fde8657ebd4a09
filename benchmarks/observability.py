"""What metrics and logging cost a worker: phase (d) of ``benchmarks.throughput``.

    .venv/bin/python -m benchmarks.throughput            # (d) runs after (c) unless --no-observability

The same workload as (b) (buffered, released and duplicate events: ~15% of the events are
logged decisions) runs through fresh deployments, alternating

* on:  the defaults: SEQGUARD_LOG_LEVEL=info, SEQGUARD_LOG_FORMAT=json, SEQGUARD_METRICS=true
* off: SEQGUARD_LOG_LEVEL=error, SEQGUARD_METRICS=false (no counting at all)

Each worker starts on an empty input topic; once it is ready the workload is produced, and
the worker's CPU (utime+stime) from then until its group committed every record, divided by
the record count, is its cost per event. CPU time, not wall time: the producer shares the
machine, and the machine is shared with others. The cost is the median "on" over the median
"off", less one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from benchmarks.measure import Workload, proc_cpu, produce_all
from tests.harness import Deployment, Worker, committed_offsets
from workers.kafka.embedded import EmbeddedBroker

MODES = {
    "on": {"SEQGUARD_LOG_LEVEL": "info", "SEQGUARD_LOG_FORMAT": "json", "SEQGUARD_METRICS": "true"},
    "off": {"SEQGUARD_LOG_LEVEL": "error", "SEQGUARD_METRICS": "false"},
}


async def cost_run(
    args: argparse.Namespace, broker: EmbeddedBroker, redis_url: str, workload: Workload, mode: str
) -> dict[str, Any]:
    deployment = Deployment(broker.url, redis_url, extra={"SEQGUARD_PARTITIONS": str(args.partitions)})
    await deployment.create_topics()
    settings = deployment.settings()
    env = {"SEQGUARD_DOMAINS": "", "SEQGUARD_FETCH_MAX_WAIT_MS": str(args.throughput_fetch_wait), **MODES[mode]}
    worker = Worker(deployment, label=f"observability-{mode}", **env)
    n = len(workload.records)
    try:
        await worker.ready(timeout=120)
        cpu0, t0 = proc_cpu(worker.proc.pid), time.monotonic()
        await produce_all(broker.bootstrap, settings.input_topic, workload.records)
        deadline = time.monotonic() + args.timeout
        while await committed_offsets(broker.bootstrap, settings.app_id, settings.input_topic, args.partitions) < n:
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"observability {mode}: the worker did not finish; {worker.log_path}")
            await asyncio.sleep(0.25)
        cpu1, t1 = proc_cpu(worker.proc.pid), time.monotonic()
    finally:
        worker.stop()
    lines = worker.log_path.read_text(errors="replace").splitlines()
    decisions = sum(1 for line in lines if '"decision"' in line)
    json_lines = sum(1 for line in lines if _is_json(line))
    return {
        "mode": mode,
        "cpu_us_per_event": round(1e6 * (cpu1 - cpu0) / n, 2),
        "events_per_cpu_second": round(n / max(1e-9, cpu1 - cpu0)),
        "wall_seconds": round(t1 - t0, 2),
        "log_lines": len(lines),
        "json_lines": json_lines,
        "decision_lines": decisions,
    }


def _is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


async def observability_cost(
    args: argparse.Namespace, broker: EmbeddedBroker, redis_url: str, workload: Workload
) -> dict[str, Any]:
    runs = []
    for _ in range(args.observability_pairs):
        for mode in ("on", "off"):
            run = await cost_run(args, broker, redis_url, workload, mode)
            runs.append(run)
            print(
                f"  {mode:>3}: {run['cpu_us_per_event']} µs worker CPU/event "
                f"({run['events_per_cpu_second']:,} events per worker CPU second), {run['log_lines']:,} log lines "
                f"({run['decision_lines']:,} decisions)",
                flush=True,
            )
    on = statistics.median(r["cpu_us_per_event"] for r in runs if r["mode"] == "on")
    off = statistics.median(r["cpu_us_per_event"] for r in runs if r["mode"] == "off")
    return {
        "runs": runs,
        "on_cpu_us_per_event": on,
        "off_cpu_us_per_event": off,
        "cost": round(on / off - 1, 4),
        "modes": MODES,
    }
