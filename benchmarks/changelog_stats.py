"""What a seqguard run wrote to its changelogs: records per input event and bytes of state per aggregate.

Every topic named ``<app_id>-<table>-changelog`` counts: they are found by listing the broker's
topics, not from a list of table names. Each is read from the beginning to its end, i.e. until
every partition's position reaches the high-water mark its last fetch reported (the embedded
broker's ListOffsets, hence ``end_offsets``, is a batch short: see docs/embedded-broker.md), or,
failing that, until no record arrived for ``quiet`` seconds.

Records written = the high-water marks' sum (offsets start at 0; the same as the records read
unless the broker compacted a topic meanwhile). State per aggregate = for each changelog key,
key + value bytes of its last record in each table (a tombstone: 0), summed over the tables;
averaged over the keys with any state left, and the largest.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

SUFFIX = "-changelog"


async def changelog_stats(
    bootstrap: str, app_id: str, input_events: int, quiet: float = 5.0, limit: float = 300.0
) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(f"{app_id}-") and t.endswith(SUFFIX))
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        read: Counter[str] = Counter()
        last: dict[tuple[str, bytes | None], int] = {}  # (topic, key) -> key + value bytes of its last record
        at_end = False
        if tps:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            deadline, quiet_since = time.monotonic() + limit, time.monotonic()
            while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet:
                batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
                for tp, msgs in batch.items():
                    read[tp.topic] += len(msgs)
                    for m in msgs:
                        last[(tp.topic, m.key)] = 0 if m.value is None else len(m.key or b"") + len(m.value)
                if batch:
                    quiet_since = time.monotonic()
                at_end = True
                for tp in tps:
                    high = consumer.highwater(tp)
                    at_end = at_end and high is not None and await consumer.position(tp) >= high
                if at_end:
                    break
        written = {t: sum(consumer.highwater(tp) or 0 for tp in tps if tp.topic == t) for t in topics}
    finally:
        await consumer.stop()

    def table(topic: str) -> str:
        return topic[len(app_id) + 1 : -len(SUFFIX)]

    per_key: defaultdict[bytes | None, int] = defaultdict(int)
    per_table: defaultdict[str, list[int]] = defaultdict(list)
    for (topic, key), size in last.items():
        per_key[key] += size
        if size:
            per_table[table(topic)].append(size)
    sizes = [s for s in per_key.values() if s]
    total = sum(written.values())
    return {
        "topics": topics,
        "records": {table(t): written[t] for t in topics},
        "records_read": {table(t): read[t] for t in topics},
        "read_to_high_water_mark": at_end,
        "records_total": total,
        "records_per_input_event": round(total / max(1, input_events), 3),
        "state_bytes_per_aggregate": {
            "aggregates": len(sizes),
            "mean": round(statistics.fmean(sizes), 1) if sizes else 0,
            "max": max(sizes, default=0),
            "mean_per_table": {t: round(statistics.fmean(v), 1) for t, v in sorted(per_table.items())},
        },
    }


def summary_lines(stats: dict[str, Any]) -> list[str]:
    s = stats["state_bytes_per_aggregate"]
    tables = ", ".join(f"{t} {c:,}" for t, c in stats["records"].items()) or "none found"
    per_table = ", ".join(f"{t} {v:,.0f}" for t, v in s["mean_per_table"].items())
    end = "" if stats["read_to_high_water_mark"] else " (NOT read to the high-water mark: quiet period ended it)"
    return [
        f"    changelog records per input event: {stats['records_per_input_event']} "
        f"({stats['records_total']:,} records: {tables}){end}",
        f"    state per aggregate (key + last value, summed over tables): mean {s['mean']:,.0f} B, "
        f"max {s['max']:,} B over {s['aggregates']:,} aggregates; mean per table: {per_table}",
    ]
