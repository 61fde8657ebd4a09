"""`seqguard audit`: the gap and operator records of the audit topic, one line each."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import click

from workers.audit import AuditUnavailable, Query, line, parse_since, read_audit
from workers.kafka import clients
from workers.settings import load_settings

KINDS = ("gap_skipped", "gap_parked", "resolved", "resolve_refused", "replayed", "malformed")


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--kind", "kinds", multiple=True, help=f"Only records of this kind (repeatable): {', '.join(KINDS)}.")
@click.option("--aggregate", help="Only this aggregate ID.")
@click.option("--since", callback=_since, help="Written at or after: ISO time, epoch seconds, or ago (15m, 2h, 1d).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="The last N matching (default 50; 0: all).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, each record with its place and time.")
def audit(
    kinds: tuple[str, ...], aggregate: str | None, since: float | None, limit: int | None, timeout: float, as_json: bool
) -> None:
    """Gap and operator records (gaps skipped or parked, resolves, DLQ replays), oldest first.

    Without --since it shows the last 50; with --since, everything since then (up to --limit).
    """
    settings = load_settings()
    if limit is None:
        limit = None if since is not None else 50
    query = Query(frozenset(kinds), aggregate, since, limit or None)
    # aiokafka logs each failed connection attempt itself; the one line below says it all.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        entries = asyncio.run(read_audit(clients.kafka(settings), settings.audit_topic, query, max_wait=timeout))
    except AuditUnavailable as exc:
        click.echo(f"seqguard audit: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps([e.as_json() for e in entries], indent=2))
        return
    for entry in entries:
        click.echo(line(entry))
    if not entries:
        click.echo(f"no audit records in {settings.audit_topic} match", err=True)
