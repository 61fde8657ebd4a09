"""`seqguard dlq ...` and `seqguard aggregates resolve`: the operator's commands."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

import click

from tables.times import parse_since
from workers.cli_common import Progress, interactive, reach
from workers.dlq.reader import Replayed, read_dead_letters
from workers.dlq.records import PREFIX, DeadLetter
from workers.dlq.replay import Filters, Plan, execute, load_plan
from workers.settings import Settings, load_settings

#: The worker keeps this much of the operator's name in the audit record.
OPERATOR_MAX = 200


def _time(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_since(value, time.time(), option)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _filters(
    aggregate: str | None, event_type: str | None, error_class: tuple[str, ...], since: str | None, until: str | None
) -> Filters:
    return Filters(aggregate, event_type, frozenset(error_class), _time(since, "--since"), _time(until, "--until"))


def filter_options(fn: Any) -> Any:
    for option in reversed(
        [
            click.option("--aggregate", help="Only this aggregate ID."),
            click.option("--type", "event_type", help="Only this event type."),
            click.option("--error-class", multiple=True, help="Only these error classes (repeatable)."),
            click.option("--since", help="Last failure at or after (ISO time, epoch seconds, or 2h ago)."),
            click.option("--until", help="Last failure at or before (ISO time, epoch seconds, or 2h ago)."),
        ]
    ):
        fn = option(fn)
    return fn


def _iso(epoch: float | None) -> str:
    return "-" if not epoch else datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


def _read(settings: Settings) -> tuple[list[DeadLetter], Replayed]:
    """The DLQ and its replay markers; Kafka out of reach is one line and exit 2."""
    return reach(read_dead_letters(settings), kafka=settings.bootstrap_servers, what=f"reading {settings.dlq}")


def _printable(value: Any) -> str:
    """Untrusted text for a terminal: control characters shown escaped, not obeyed."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _bytes_view(raw: bytes | None) -> dict[str, str | None]:
    """``{"value": text}`` if ``raw`` is UTF-8, else ``{"value_base64": ...}``; ``{"value": None}`` for null."""
    if raw is None:
        return {"value": None}
    try:
        return {"value": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(raw).decode("ascii")}


def payload_of(letter: DeadLetter) -> dict[str, Any]:
    """The record as its producer wrote it: value and the producer's own headers (not seqguard's)."""
    headers = [{"key": k, **_bytes_view(v)} for k, v in letter.headers if not k.startswith(PREFIX)]
    return {**_bytes_view(letter.value), "original_headers": headers}


def _payload_lines(view: dict[str, Any]) -> list[str]:
    def shown(item: dict[str, Any]) -> str:
        if "value_base64" in item:
            return f"(base64) {item['value_base64']}"
        return "(null)" if item["value"] is None else _printable(item["value"])

    lines = [f"    value: {shown(view)}", f"    original headers ({len(view['original_headers'])}):"]
    lines += [f"      {_printable(h['key'])}: {shown(h)}" for h in view["original_headers"]]
    return lines


@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter queue."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(as_json: bool) -> None:
    """Counts of DLQ records by error class, event type and aggregate; oldest and newest."""
    settings = load_settings()
    letters, replayed = _read(settings)
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
            click.echo(f"  {n:>7}  {_printable(name)}")


@dlq.command("show")
@filter_options
@click.option("--limit", default=50, show_default=True)
@click.option("--all", "include_replayed", is_flag=True, help="Include records already replayed.")
@click.option(
    "--payload", is_flag=True, help="Also the original value (text if UTF-8, else base64) and the producer's headers."
)
@click.option("--json", "as_json", is_flag=True)
def dlq_show(
    aggregate: str | None,
    event_type: str | None,
    error_class: tuple[str, ...],
    since: str | None,
    until: str | None,
    limit: int,
    include_replayed: bool,
    payload: bool,
    as_json: bool,
) -> None:
    """DLQ records with their failure details (the seqguard-* headers); --payload adds the record itself."""
    settings = load_settings()
    letters, replayed = _read(settings)
    filters = _filters(aggregate, event_type, error_class, since, until)
    chosen = [lt for lt in letters if filters.match(lt) and (include_replayed or lt.place not in replayed)][:limit]
    rows = [{**lt.summary(), "replayed": lt.place in replayed} for lt in chosen]
    if payload:
        for row, letter in zip(rows, chosen, strict=True):
            row["payload"] = payload_of(letter)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        r = {k: _printable(v) for k, v in row.items() if k != "payload"}
        click.echo(
            f"{r['place']}  {r.get('error-class', '?')}  {r.get('aggregate-id', '?')}#{r.get('sequence', '?')} "
            f"{r.get('event-type', '?')}  attempts={r.get('attempts', '?')} replays={r.get('replay-count', '0')}"
            f"{'  (replayed)' if row['replayed'] else ''}\n    {r.get('error-message', '')}"
        )
        if "payload" in row:
            click.echo("\n".join(_payload_lines(row["payload"])))
    click.echo(f"{len(rows)} record(s)")


#: Records per acknowledged chunk of an operator's replay (execute's default).
CHUNK = 5_000


def _bar_chunk(total: int, rate: float) -> int:
    """Records per acknowledged chunk while a bar is drawn: about 50 steps, a second each when rate-limited."""
    chunk = min(CHUNK, max(100, total // 50))
    return min(chunk, max(100, int(rate))) if rate else chunk


def _republish(settings: Settings, plan: Plan, rate: float | None, operator: str | None) -> tuple[int, float]:
    """Run the replay with its progress (a bar on a terminal, else one line); (records republished, seconds)."""
    started = time.monotonic()
    with Progress(len(plan.replay), "replay", done="republished") as progress:
        chunk = CHUNK
        if progress.bar is not None:  # the bar moves once per acknowledged chunk
            chunk = _bar_chunk(len(plan.replay), settings.replay_rate if rate is None else rate)
        work = execute(
            settings, plan, rate=rate, operator=operator, chunk=chunk, on_chunk=lambda part: progress.advance(len(part))
        )
        sent = reach(work, kafka=settings.bootstrap_servers, what=f"republishing to {settings.input_topic}")
    return sent, time.monotonic() - started


NO_FILTER_HINT = (
    "seqguard dlq replay: no filter given: pass --all to replay every waiting record, "
    "or choose with --aggregate, --type, --error-class, --since or --until"
)


def _must_ask(filters: Filters, replay_all: bool, dry_run: bool) -> bool:
    """Whether to ask before replaying: no filter and no --all. Off a terminal nobody can answer: exit 2."""
    if replay_all and filters != Filters():
        raise click.UsageError("--all replays every waiting record: drop it, or drop the filters")
    ask = filters == Filters() and not replay_all and not dry_run
    if ask and not interactive():
        click.echo(NO_FILTER_HINT, err=True)
        sys.exit(2)
    return ask


@dlq.command("replay")
@filter_options
@click.option("--all", "replay_all", is_flag=True, help="Replay every waiting record (needed when no filter is given).")
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
    replay_all: bool,
    dry_run: bool,
    rate: float | None,
    operator: str | None,
    as_json: bool,
) -> None:
    """Republish DLQ records in order (aggregate, sequence, original time) to their input topic.

    Without a filter it replays everything waiting: that needs --all, or a yes at the prompt
    on a terminal. Progress: a bar on a terminal, else one summary line (stderr).
    """
    settings = load_settings()
    filters = _filters(aggregate, event_type, error_class, since, until)
    ask = _must_ask(filters, replay_all, dry_run)
    plan = reach(load_plan(settings, filters), kafka=settings.bootstrap_servers, what=f"reading {settings.dlq}")
    summary = plan.summary()
    if ask and plan.replay:
        click.confirm(
            f"Replay all {len(plan.replay)} waiting record(s) of {summary['aggregates']} aggregate(s) "
            f"{summary['by_error_class']}?",
            abort=True,
            err=True,
        )
    sent, elapsed = _republish(settings, plan, rate, operator) if plan.replay and not dry_run else (0, 0.0)
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
    """Run the DLQ agent: report, and auto-replay transient error classes with backoff.

    SIGTERM/SIGINT: the chunk in flight is republished, audited and marked, then exit 0.
    Web pages on SEQGUARD_WEB_PORT: /metrics, /livez, /readyz (/healthz)."""
    from workers import logs
    from workers.dlq.agent import run_forever

    settings = load_settings()
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
@click.option("--json", "as_json", is_flag=True, help="Print what was sent, and where, as JSON.")
def resolve(aggregate: str, skip_to: int, reason: str, operator: str | None, as_json: bool) -> None:
    """Un-park AGGREGATE: it continues from --skip-to. Recorded in the audit topic.

    The command goes to the control topic (SEQGUARD_CONTROL_TOPIC_NAME, default
    <input_topic>.control), which Kafka ACLs should let only operators write. The operator's
    name is required (--operator or SEQGUARD_OPERATOR): an audit record must say who acted.
    """
    from workers.envelope import encode_structured
    from workers.kafka import clients
    from workers.processor.batch import CONTROL_SOURCE, RESOLVE_TYPE

    settings = load_settings()
    operator = (settings.operator if operator is None else operator).strip()
    if not operator:
        raise click.UsageError("who is resolving? Pass --operator NAME or set SEQGUARD_OPERATOR (kept in the audit)")
    if len(operator) > OPERATOR_MAX:
        raise click.UsageError(f"--operator is longer than {OPERATOR_MAX} characters")
    event_id = str(uuid.uuid4())
    headers, value = encode_structured(
        {
            "id": event_id,
            "source": CONTROL_SOURCE,
            "type": RESOLVE_TYPE,
            "partitionkey": aggregate,
            "data": {"skip_to": skip_to, "reason": reason, "operator": operator},
        }
    )

    async def send() -> Any:
        producer = clients.producer(settings, acks="all")
        try:
            await producer.start()  # in the try: stopped after a failed start too
            return await producer.send_and_wait(settings.control_topic, value, key=aggregate.encode(), headers=headers)
        finally:
            await producer.stop()

    sent = reach(send(), kafka=settings.bootstrap_servers, what=f"sending to {settings.control_topic}")
    if as_json:
        where = {"control_topic": settings.control_topic, "partition": sent.partition, "offset": sent.offset}
        body = {"aggregate": aggregate, "skip_to": skip_to, "reason": reason, "operator": operator, "id": event_id}
        click.echo(json.dumps({**body, **where, "audit_topic": settings.audit_topic}, indent=2))
        return
    click.echo(
        f"resolve of {aggregate} (skip to {skip_to}) by {operator} sent to {settings.control_topic}; "
        f"the owning worker applies it and audits it in {settings.audit_topic}"
    )
