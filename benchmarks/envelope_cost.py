"""Decoding cost per 300-byte structured CloudEvent: workers.envelope.decode vs the cloudevents SDK.

    .venv/bin/python -m benchmarks.envelope_cost [--events 20000] [--repeat 7] [--size 300]

Every decoder gets the same records (key, headers, value) as they come out of aiokafka and
turns each into an event object with its attributes and parsed JSON data:

* stdlib json.loads: the floor (no attribute checks, no object);
* workers.envelope.decode: what the worker runs per record (checks + Envelope);
* cloudevents SDK 1.x API (``cloudevents.v1.kafka.from_structured``, the former
  ``cloudevents.kafka``), which returns a ``cloudevents.v1.http.CloudEvent``;
* cloudevents SDK 2.x core API (``cloudevents.core.bindings.kafka.from_structured``,
  JSONFormat, v1.0 CloudEvent), if installed.

The SDK takes headers as a dict, so building that dict from aiokafka's list of tuples is
counted, as a consumer would have to. Best of --repeat runs, in µs per event. Single
process, but the machine is shared: compare within one run, not across runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.measure import make_event
from workers.envelope import decode

Record = tuple[bytes, list[tuple[str, bytes]], bytes]


def decoders() -> dict[str, Callable[[Record], Any]]:
    out: dict[str, Callable[[Record], Any]] = {
        "stdlib json.loads (floor)": lambda r: json.loads(r[2]),
        "workers.envelope.decode": lambda r: decode(r[0], r[2], r[1]),
    }
    try:
        from cloudevents.v1.kafka import KafkaMessage as V1Message
        from cloudevents.v1.kafka import from_structured as v1_from_structured

        out["cloudevents.v1.kafka.from_structured"] = lambda r: v1_from_structured(V1Message(dict(r[1]), r[0], r[2]))
    except ImportError:
        try:  # cloudevents < 2: the same API under its old name
            from cloudevents.kafka import KafkaMessage as OldMessage  # type: ignore[no-redef]
            from cloudevents.kafka import from_structured as old_from_structured

            out["cloudevents.kafka.from_structured"] = lambda r: old_from_structured(OldMessage(dict(r[1]), r[0], r[2]))
        except ImportError:
            pass
    try:
        from cloudevents.core.bindings.kafka import KafkaMessage as CoreMessage
        from cloudevents.core.bindings.kafka import from_structured as core_from_structured
        from cloudevents.core.formats.json import JSONFormat
        from cloudevents.core.v1.event import CloudEvent

        fmt = JSONFormat()
        out["cloudevents.core.bindings.kafka.from_structured"] = lambda r: core_from_structured(
            CoreMessage(dict(r[1]), r[0], r[2]), fmt, CloudEvent
        )
    except ImportError:
        pass
    return out


def check_equivalent(records: list[Record], funcs: dict[str, Callable[[Record], Any]]) -> None:
    """Every decoder must read the same attributes, or the comparison means nothing."""
    key, headers, value = records[0]
    env = decode(key, value, headers)
    for name, fn in funcs.items():
        event = fn(records[0])
        if name.startswith("stdlib"):
            assert event["sequence"] == env.sequence
            continue
        if name.startswith("workers."):
            continue
        if hasattr(event, "get_attributes"):  # cloudevents.core
            attrs, data = dict(event.get_attributes()), event.get_data()
        else:  # cloudevents.v1: a mapping of attributes, data apart
            attrs, data = {k: event[k] for k in ("id", "source", "type", "sequence")}, event.data
        assert attrs["id"] == env.id and attrs["source"] == env.source and attrs["type"] == env.type, name
        assert int(attrs["sequence"]) == env.sequence, name
        assert data == env.data, name


def time_per_event(fn: Callable[[Record], Any], records: list[Record], repeat: int) -> list[float]:
    runs = []
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        for rec in records:
            fn(rec)
        runs.append(1e6 * (time.perf_counter() - started) / len(records))
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=20_000, help="distinct events per timed run")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--size", type=int, default=300, help="bytes per record value")
    args = p.parse_args(argv)

    records = [make_event(f"agg-{i % 10_000:05d}", i // 10_000 + 1, args.size) for i in range(args.events)]
    funcs = decoders()
    check_equivalent(records, funcs)
    for fn in funcs.values():  # warm up
        for rec in records[:1000]:
            fn(rec)
    import cloudevents

    sizes = sorted({len(v) for _, _, v in records})
    print(f"{args.events:,} structured CloudEvents of {sizes[0]}-{sizes[-1]} bytes, best of {args.repeat} runs")
    print(f"python {platform.python_version()}, cloudevents {cloudevents.__version__}; shared noisy machine")
    base = None
    results = {}
    for name, fn in funcs.items():
        runs = time_per_event(fn, records, args.repeat)
        best, median = min(runs), sorted(runs)[len(runs) // 2]
        results[name] = best
        if name.startswith("workers."):
            base = best
        print(f"  {name:<50} {best:7.2f} µs/event (median {median:.2f})")
    if base:
        for name, best in results.items():
            if name.startswith("cloudevents"):
                print(f"  {name} / workers.envelope.decode = {best / base:.2f}x")
    cmd = " ".join(["cd", str(sys.path[0] or "."), "&&", ".venv/bin/python -m benchmarks.envelope_cost", *sys.argv[1:]])
    print(f"reproduce: {cmd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
