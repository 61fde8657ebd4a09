"""`seqguard scan TOPIC`: find out-of-order events, sequence gaps and duplicates in any topic.

Any CloudEvents topic: seqguard's input, its output, or one it never touched (no worker, no
Redis, no consumer group: a plain assigned consumer that commits nothing). Records are decoded
by ``workers.envelope.decode`` with the worker's limits (Settings), so the scan sees what a
worker would; the judging is ``tables.scan`` (read its docstring for the exact rules).

What is read: every partition from its start (or from ``--since``) up to the end each
partition had at its first fetch, so a topic still being written ends the scan all the same.
That end is the fetch's high-water mark, never ListOffsets (a record batch short on the
embedded broker, docs/embedded-broker.md), as ``workers.kafka.read`` does. ``--since`` seeks
with ``offsets_for_times``, and then skips, per partition, records before the first one at or
after the time: on Kafka the lookup is exact and nothing is skipped; the embedded broker (Tansu
0.6.0) answers every timestamp lookup with the partition's start, and the skip does the rest.
The whole topic is not held: each record is decoded and dropped.

Exit status, like a linter: 0 nothing found, 1 findings, 2 usage or connection error (one line
on stderr).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import click
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from tables.scan import Observation, Report, Scanner, SinceGate
from tables.times import parse_since
from workers.envelope import decode
from workers.errors import DecodeError, StartupError
from workers.kafka import clients
from workers.kafka.read import POLL_MS, _partitions
from workers.settings import Settings, load_settings

EXIT_CLEAN, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2


class ScanError(Exception):
    """A one-line reason to stop with exit status 2."""


@dataclass
class PartitionRead:
    records: int = 0  # records read, whatever they hold
    first_offset: int | None = None
    last_offset: int | None = None
    end: int | None = None  # the high-water mark of the first fetch: where the scan stops
    since_offset: int | None = None  # what offsets_for_times answered (--since)


@dataclass
class Feeder:
    """Decodes each record and hands it to the scanner (or counts it undecodable)."""

    scanner: Scanner
    settings: Settings
    aggregate: str | None
    gate: SinceGate
    partitions: dict[int, PartitionRead] = field(default_factory=dict)
    other_aggregates: int = 0  # records left out by --aggregate

    def __call__(self, record: Any) -> None:
        seen = self.partitions[record.partition]
        seen.records += 1
        seen.first_offset = record.offset if seen.first_offset is None else seen.first_offset
        seen.last_offset = record.offset
        timestamp = record.timestamp / 1000.0 if record.timestamp is not None and record.timestamp >= 0 else None
        if not self.gate.admit(record.partition, timestamp):
            return
        s = self.settings
        try:
            env = decode(
                record.key,
                record.value,
                record.headers,
                max_sequence=s.max_sequence,
                max_bytes=s.max_event_bytes,
                derive_ids=s.derive_missing_ids,
            )
        except DecodeError as exc:
            if self.aggregate is None or record.key == self.aggregate.encode():  # attributed by its key
                self.scanner.undecodable(record.partition, record.offset, str(exc))
            else:
                self.other_aggregates += 1
            return
        except Exception as exc:  # noqa: BLE001 - a decoder bug met by odd input must not end the scan
            self.scanner.undecodable(record.partition, record.offset, f"decoder error: {type(exc).__name__}: {exc}")
            return
        if self.aggregate is not None and env.aggregate_id != self.aggregate:
            self.other_aggregates += 1
            return
        self.scanner.observe(
            Observation(env.aggregate_id, env.sequence, env.idempotency_key, record.partition, record.offset, timestamp)
        )


def _read_any_header_key() -> None:
    """Install seqguard's record reader, so a header key that is not UTF-8 is a record the scan
    reports rather than an error out of aiokafka's fetch (workers/kafka/patches.py)."""
    from workers.kafka import check_versions

    try:
        check_versions()
    except StartupError:
        return  # other aiokafka: its own reader (such a key then ends the scan with status 2)
    from workers.kafka.patches import install_record_reader

    install_record_reader()


async def scan_topic(
    bootstrap: clients.Kafka, topic: str, feed: Feeder, *, since: float | None, silence: float
) -> dict[int, PartitionRead]:
    """Read ``topic`` to the end it had when the scan began, feeding every record to ``feed``."""
    consumer = clients.consumer(
        bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        request_timeout_ms=int(silence * 1000),
    )
    try:
        await consumer.start()
        await _scan(consumer, topic, feed, since, silence)
    except KafkaConnectionError as exc:
        raise ScanError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    except KafkaError as exc:
        raise ScanError(f"Kafka at {bootstrap}: {exc}") from None
    except UnicodeDecodeError as exc:  # aiokafka's own reader met a header key that is not UTF-8
        raise ScanError(f"a record of {topic} cannot be read by this aiokafka: {exc}") from None
    finally:
        await consumer.stop()  # also after a failed start: no "Unclosed AIOKafkaConsumer"
    return feed.partitions


async def _scan(consumer: AIOKafkaConsumer, topic: str, feed: Feeder, since: float | None, silence: float) -> None:
    tps = await _partitions(consumer, topic, 0.0)  # all topics' metadata: naming one would create it
    if not tps:
        raise ScanError(f"topic {topic!r} does not exist")
    feed.partitions.update({tp.partition: PartitionRead() for tp in tps})
    starts = await _starts(consumer, tps, since)
    for tp, offset in starts.items():
        feed.partitions[tp.partition].since_offset = offset
    todo = [tp for tp in tps if since is None or starts.get(tp) is not None]
    if not todo:
        return
    consumer.assign(todo)
    for tp in todo:
        start = starts.get(tp)
        if start is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start)
    ends = await _read(consumer, todo, feed, silence)
    for tp, end in ends.items():
        feed.partitions[tp.partition].end = end


async def _starts(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], since: float | None
) -> dict[TopicPartition, int | None]:
    """Per partition, the first offset at or after ``since`` (None: no such record)."""
    if since is None:
        return {}
    found = await consumer.offsets_for_times({tp: int(since * 1000) for tp in tps})
    return {tp: None if hit is None else hit.offset for tp, hit in found.items()}


async def _read(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], feed: Callable[[Any], None], silence: float
) -> dict[TopicPartition, int]:
    """Every record up to each partition's first high-water mark; ScanError if the broker
    stays silent for ``silence`` s."""
    now = asyncio.get_running_loop().time
    ends: dict[TopicPartition, int] = {}
    pending = set(tps)
    last_progress = now()
    while pending:
        batch = await consumer.getmany(timeout_ms=POLL_MS)
        for tp in pending:
            if tp not in ends and (highwater := consumer.highwater(tp)) is not None:
                ends[tp] = highwater  # the end as of the scan's start: later records are not read
        for tp, records in batch.items():
            end = ends.get(tp)
            for record in records:
                if end is not None and record.offset >= end:
                    break
                feed(record)
            last_progress = now() if records else last_progress
        for tp in list(pending):
            if tp in ends and await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
                consumer.pause(tp)
                last_progress = now()
        if pending and now() - last_progress > silence:
            waiting = ", ".join(str(tp.partition) for tp in sorted(pending, key=lambda tp: tp.partition))
            raise ScanError(f"no answer within {silence:g} s for partition(s) {waiting} of {tps[0].topic}")
    return ends


# --------------------------------------------------------------------------- output


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def as_json(topic: str, report: Report, feed: Feeder, since: float | None) -> dict[str, Any]:
    return {
        "topic": topic,
        "since": _iso(since),
        "aggregate": feed.aggregate,
        "findings": report.findings,
        "totals": asdict(report.totals),
        "partitions": {str(p): asdict(r) for p, r in sorted(feed.partitions.items())},
        "skipped_before_since": feed.gate.skipped,
        "other_aggregates": feed.other_aggregates,
        "aggregates": [a.to_dict() for a in report.aggregates],
        "undecodable_by_reason": report.undecodable_by_reason,
        "undecodable": [asdict(u) for u in report.undecodable],
    }


def _gaps_text(gaps: tuple[tuple[int, int], ...], shown: int = 3) -> str:
    text = ", ".join(f"{a}..{b}" for a, b in gaps[:shown]) or "-"
    return text + (f" (+{len(gaps) - shown})" if len(gaps) > shown else "")


def as_table(topic: str, report: Report, feed: Feeder, since: float | None, limit: int) -> list[str]:
    t = report.totals
    origin = f"since {_iso(since)}" if since is not None else "from the beginning"
    read = sum(p.records for p in feed.partitions.values())
    lines = [f"{topic}: {read:,} records on {len(feed.partitions)} partition(s), read {origin}"]
    header = ("aggregate", "events", "out-of-order", "duplicates", "conflicts", "missing", "gaps", "partitions")
    rows = [header] + [
        (
            a.aggregate_id,
            f"{a.count:,}",
            f"{a.out_of_order:,}",
            f"{a.duplicates:,}",
            f"{a.conflicts:,}",
            f"{a.missing:,}",
            _gaps_text(a.gaps),
            ",".join(map(str, a.partitions)) + (f" (on {len(a.partitions)})" if a.split else ""),
        )
        for a in report.aggregates[:limit]
    ]
    if len(rows) > 1:
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        left = {0, 6, 7}
        for row in rows:
            cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            lines.append("  ".join(cells).rstrip())
    if feed.aggregate is not None and not report.aggregates:
        lines.append(f"no event of aggregate {feed.aggregate!r}")
    if len(report.aggregates) > limit:
        lines.append(f"... {len(report.aggregates) - limit:,} more aggregate(s) listed by --json or a larger --limit")
    lines.append(
        f"totals: {t.aggregates:,} aggregates ({t.aggregates_with_findings:,} with findings), {t.events:,} events: "
        f"{t.out_of_order:,} out of order, {t.duplicates:,} duplicates, {t.conflicts:,} conflicts, "
        f"{t.missing:,} missing numbers in {t.gap_ranges:,} gaps, {t.split_aggregates:,} aggregate(s) on several "
        f"partitions, {t.undecodable:,} undecodable records, {t.unsequenced:,} without a sequence"
    )
    for reason, n in report.undecodable_by_reason.items():
        lines.append(f"  undecodable: {n:,}  {reason}")
    if feed.gate.skipped or feed.other_aggregates:
        lines.append(f"left out: {feed.gate.skipped:,} before --since, {feed.other_aggregates:,} of other aggregates")
    lines.append("findings: exit status 1" if report.findings else "no disorder found")
    return lines


def _fail(message: str) -> NoReturn:
    click.echo(f"seqguard scan: {message}", err=True)
    sys.exit(EXIT_ERROR)


@click.command("scan")
@click.argument("topic")
@click.option("--since", help="Only records from this time on: 15m, 2h, 1d, an ISO-8601 time, or epoch seconds.")
@click.option("--aggregate", help="Only this aggregate ID.")
@click.option("--json", "json_out", is_flag=True, help="Print the full report as JSON.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=0), help="Table rows at most.")
@click.option("--bootstrap", help="Kafka bootstrap servers host:port[,...] (default: from SEQGUARD_BROKER_URL).")
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=1.0),  # above the fetch wait
    help="Exit 2 after this many seconds without an answer from the broker.",
)
def scan(
    topic: str,
    since: str | None,
    aggregate: str | None,
    json_out: bool,
    limit: int,
    bootstrap: str | None,
    timeout: float,
) -> None:
    """Report, per aggregate, events out of order, sequence gaps and duplicate ids in TOPIC.

    Reads any CloudEvents topic (binary or structured mode) from its start, or from --since,
    up to its end when the scan began; commits nothing. Exit status: 0 nothing found, 1
    findings (out of order, duplicates, conflicts, gaps, an aggregate on several partitions,
    undecodable records), 2 usage or connection error.
    """
    try:
        settings = load_settings()
        since_at = None if since is None else parse_since(since, time.time())
    except ValueError as exc:  # pydantic's ValidationError is a ValueError too
        _fail(str(exc).splitlines()[0])
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL + 1)  # its connection retries: our one line says it
    logging.getLogger("workers.kafka.patches").setLevel(logging.ERROR)  # a bad header key is reported below
    _read_any_header_key()
    feed = Feeder(Scanner(), settings, aggregate, SinceGate(since_at))
    servers = clients.kafka(settings, servers=bootstrap)  # --bootstrap keeps the security settings
    try:
        asyncio.run(scan_topic(servers, topic, feed, since=since_at, silence=timeout))
    except ScanError as exc:
        _fail(str(exc))
    report = feed.scanner.report(include_clean=aggregate is not None)
    if json_out:
        click.echo(json.dumps(as_json(topic, report, feed, since_at), indent=2))
    else:
        click.echo("\n".join(as_table(topic, report, feed, since_at, limit)))
    sys.exit(EXIT_FINDINGS if report.findings else EXIT_CLEAN)
