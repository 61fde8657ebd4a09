"""`seqguard dlq ...` and `seqguard aggregates resolve`: the operator's commands."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import click

from workers.dlq.reader import read_dead_letters
from workers.dlq.replay import Filters, execute, load_plan
from workers.settings import Settings

#: The worker keeps this much of the operator's name in the audit record.
OPERATOR_MAX = 200


def _time(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(value).timestamp()


def _filters(
    aggregate: str | None, event_type: str | None, error_class: tuple[str, ...], since: str | None, until: str | None
) -> Filters:
    return Filters(aggregate, event_type, frozenset(error_class), _time(since), _time(until))


def filter_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option("--aggregate", help="Only this aggregate ID."),
            click.option("--type", "event_type", help="Only this event type."),
            click.option("--error-class", multiple=True, help="Only these error classes (repeatable)."),
            click.option("--since", help="Last failure at or after (ISO time or epoch seconds)."),
            click.option("--until", help="Last failure at or before (ISO time or epoch seconds)."),
        ]
    ):
        fn = option(fn)
    return fn


def _iso(epoch: float | None) -> str:
    return "-" if not epoch else datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter queue."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(as_json: bool) -> None:
    """Counts of DLQ records by error class, event type and aggregate; oldest and newest."""
    settings = Settings()
    letters, replayed = asyncio.run(read_dead_letters(settings))
    waiting = [letter for letter in letters if letter.place not in replayed]
    failures = [letter.last_failure for letter in waiting]
    report: dict[str, Any] = {
        "topic": settings.dlq,
        "records": len(letters),
        "waiting": len(waiting),
        "replayed": len(letters) - len(waiting),
        "by_error_class": dict(Counter(letter.error_class for letter in waiting)),
        "by_event_type": dict(Counter(letter.event_type or "?" for letter in waiting)),
        "by_aggregate": dict(Counter(letter.aggregate_id or "?" for letter in waiting).most_common(20)),
        "oldest": min(failures, default=None),
        "newest": max(failures, default=None),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(
        f"{settings.dlq}: {report['records']} records, {report['waiting']} waiting, {report['replayed']} replayed"
    )
    click.echo(f"oldest failure {_iso(report['oldest'])}, newest {_iso(report['newest'])}")
    for title in ("by_error_class", "by_event_type", "by_aggregate"):
        click.echo(f"\n{title.replace('_', ' ')}:")
        for name, n in sorted(report[title].items(), key=lambda kv: -kv[1]):
            click.echo(f"  {n:>7}  {name}")


@dlq.command("show")
@filter_options
@click.option("--limit", default=50, show_default=True)
@click.option("--all", "include_replayed", is_flag=True, help="Include records already replayed.")
@click.option("--json", "as_json", is_flag=True)
def dlq_show(
    aggregate: str | None,
    event_type: str | None,
    error_class: tuple[str, ...],
    since: str | None,
    until: str | None,
    limit: int,
    include_replayed: bool,
    as_json: bool,
) -> None:
    """DLQ records with their failure details."""
    settings = Settings()
    letters, replayed = asyncio.run(read_dead_letters(settings))
    filters = _filters(aggregate, event_type, error_class, since, until)
    chosen = [lt for lt in letters if filters.match(lt) and (include_replayed or lt.place not in replayed)][:limit]
    rows = [{**lt.summary(), "replayed": lt.place in replayed} for lt in chosen]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(
            f"{row['place']}  {row.get('error-class', '?')}  {row.get('aggregate-id', '?')}#{row.get('sequence', '?')} "
            f"{row.get('event-type', '?')}  attempts={row.get('attempts', '?')} replays={row.get('replay-count', '0')}"
            f"{'  (replayed)' if row['replayed'] else ''}\n    {row.get('error-message', '')}"
        )
    click.echo(f"{len(rows)} record(s)")


@dlq.command("replay")
@filter_options
@click.option("--dry-run", is_flag=True, help="Print the plan; republish nothing.")
@click.option("--rate", type=float, default=None, help="Records/s (default SEQGUARD_REPLAY_RATE; 0: unlimited).")
@click.option("--operator", help="Who replays, kept in the audit topic (default: SEQGUARD_OPERATOR).")
@click.option("--json", "as_json", is_flag=True)
def dlq_replay(
    aggregate: str | None,
    event_type: str | None,
    error_class: tuple[str, ...],
    since: str | None,
    until: str | None,
    dry_run: bool,
    rate: float | None,
    operator: str | None,
    as_json: bool,
) -> None:
    """Republish DLQ records in order (aggregate, sequence, original time) to their input topic."""
    settings = Settings()
    filters = _filters(aggregate, event_type, error_class, since, until)
    plan = asyncio.run(load_plan(settings, filters))
    summary = plan.summary()
    sent, elapsed = 0, 0.0
    if not dry_run and plan.replay:
        started = time.monotonic()
        sent = asyncio.run(execute(settings, plan, rate=rate, operator=operator))
        elapsed = time.monotonic() - started
    result = {**summary, "dry_run": dry_run, "republished": sent, "seconds": round(elapsed, 3)}
    if as_json:
        result["plan"] = [[lt.aggregate_id, lt.sequence, lt.event_type, lt.error_class, lt.place] for lt in plan.replay]
        click.echo(json.dumps(result, indent=2))
        return
    verb = "would republish" if dry_run else "republished"
    count = len(plan.replay) if dry_run else sent
    click.echo(f"{verb} {count} record(s) of {summary['aggregates']} aggregate(s) {summary['by_error_class']}")
    click.echo(
        f"skipped: {plan.already_replayed} already replayed, {len(plan.over_limit)} over the replay limit "
        f"(SEQGUARD_MAX_REPLAYS={settings.max_replays}; left for an operator), {plan.not_matching} not matching"
    )
    if dry_run:
        for lt in plan.replay[:200]:
            click.echo(
                f"  {lt.aggregate_id}#{lt.sequence} {lt.event_type} "
                f"({lt.error_class}, replays={lt.replay_count}) from {lt.place}"
            )
    elif sent:
        click.echo(f"{sent / max(elapsed, 1e-9):,.0f} records/s")


@dlq.command("agent")
def dlq_agent() -> None:
    """Run the DLQ agent: report, and auto-replay transient error classes with backoff."""
    from workers import logs
    from workers.dlq.agent import run_forever

    settings = Settings()
    logs.configure(settings.log_level, settings.log_format, worker=logs.worker_name(settings), capture_stdio=True)
    asyncio.run(run_forever(settings))


@click.group()
def aggregates() -> None:
    """Operator actions on aggregates."""


@aggregates.command("resolve")
@click.argument("aggregate")
@click.option("--skip-to", type=int, required=True, help="Give up on every sequence number below this one.")
@click.option("--reason", required=True, help="Why (kept in the audit topic).")
@click.option("--operator", help="Who resolves, kept in the audit topic (default: SEQGUARD_OPERATOR; one is required).")
def resolve(aggregate: str, skip_to: int, reason: str, operator: str | None) -> None:
    """Un-park AGGREGATE: it continues from --skip-to. Recorded in the audit topic.

    The command goes to the control topic (SEQGUARD_CONTROL_TOPIC_NAME, default
    <input_topic>.control), which Kafka ACLs should let only operators write. The operator's
    name is required (--operator or SEQGUARD_OPERATOR): an audit record must say who acted.
    """
    from aiokafka import AIOKafkaProducer

    from workers.envelope import encode_structured
    from workers.processor.batch import CONTROL_SOURCE, RESOLVE_TYPE

    settings = Settings()
    operator = (settings.operator if operator is None else operator).strip()
    if not operator:
        raise click.UsageError("who is resolving? Pass --operator NAME or set SEQGUARD_OPERATOR (kept in the audit)")
    if len(operator) > OPERATOR_MAX:
        raise click.UsageError(f"--operator is longer than {OPERATOR_MAX} characters")
    headers, value = encode_structured(
        {
            "id": str(uuid.uuid4()),
            "source": CONTROL_SOURCE,
            "type": RESOLVE_TYPE,
            "partitionkey": aggregate,
            "data": {"skip_to": skip_to, "reason": reason, "operator": operator},
        }
    )

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(settings.control_topic, value, key=aggregate.encode(), headers=headers)
        finally:
            await producer.stop()

    asyncio.run(send())
    click.echo(
        f"resolve of {aggregate} (skip to {skip_to}) by {operator} sent to {settings.control_topic}; "
        f"the owning worker applies it and audits it in {settings.audit_topic}"
    )
