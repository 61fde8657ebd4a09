"""CPU per event of the ordered processor alone: no broker, no Faust, the real core, Sink and store.

    .venv/bin/python -m benchmarks.processor_cpu [--events 200000] [--profile]

The default workload of ``benchmarks.throughput`` (10,000 aggregates, 8 partitions, 10% ahead
of their turn, 5% duplicates, 300 B values) goes through ``OrderedProcessor.process_batch``
in fetch-sized batches, with the same in-memory table and recording producer as the unit
tests (tests/unit/test_processor_faults.py). It isolates seqguard's own per-event cost from
the fetch and the broker; ``--profile`` prints cProfile's top functions. Compare runs of one
session only (the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

from benchmarks.measure import build_workload
from tables.policy import PolicyBook
from tests.unit.test_processor_faults import CHANGELOG, Producer, Table
from workers.handlers import Registry
from workers.inspect import partition_of
from workers.kafka.sink import Sink
from workers.metrics import Metrics
from workers.processor.batch import OrderedProcessor
from workers.processor.store import StateStore
from workers.records import InRecord
from workers.settings import Settings


def records(args: argparse.Namespace, topic: str) -> list[InRecord]:
    w = build_workload(args.events, args.aggregates, args.ooo, args.dups, args.size, args.seed)
    out = []
    offsets = [0] * args.partitions
    for key, headers, value in w.records:
        p = partition_of(key.decode(), args.partitions)
        out.append(InRecord(topic, p, offsets[p], time.time(), key, value, list(headers)))
        offsets[p] += 1
    return out


async def run(args: argparse.Namespace, prof: cProfile.Profile | None = None) -> dict[str, Any]:
    settings = Settings()
    producer, table = Producer(), Table()
    sink = Sink(lambda: producer, state_topics=frozenset({CHANGELOG}))  # type: ignore[arg-type,return-value]
    p = OrderedProcessor(
        settings,
        StateStore(table, sink, cache_size=settings.state_cache),
        sink,
        Registry(),
        None,
        Metrics.disabled(),
        PolicyBook(),
        "b",
    )
    recs = records(args, settings.input_topic)
    if prof is not None:
        prof.enable()
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(recs), args.batch):
        await p.process_batch(recs[i : i + args.batch])
    cpu = time.process_time() - cpu
    if prof is not None:
        prof.disable()
    return {
        "events": len(recs),
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_us_per_event": round(cpu / len(recs) * 1e6, 2),
        "output": len(producer.sent.get(settings.output_topic, [])),
        "changelog": len(producer.sent.get(CHANGELOG, [])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--aggregates", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--ooo", type=float, default=0.1)
    ap.add_argument("--dups", type=float, default=0.05)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4_000, help="records per process_batch (a fetch)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    prof = cProfile.Profile() if args.profile else None
    result = asyncio.run(run(args, prof))
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    print(result)


if __name__ == "__main__":
    main()
