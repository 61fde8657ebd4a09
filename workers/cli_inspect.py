"""`seqguard gaps`, `seqguard aggregate ID` and `seqguard verify`: ask the workers.

Each worker answers for the partitions it owns (its /gaps and /aggregates pages,
workers/web_aggregates.py) and lists every member of the group, so the commands ask one
worker, then every other one it names. A survey is complete only if every member answered
and together they reported every partition: `verify` never says "all clear" otherwise.
Aggregate IDs are untrusted: the tables escape what a terminal would interpret.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import click

from tables.inspect import MAX_PAGE, ranges_text, sort_key
from workers.settings import Settings, load_settings

EXIT_CLEAR, EXIT_HELD, EXIT_UNANSWERED = 0, 1, 2
REQUEST_TIMEOUT = 10.0
BUSY = (421, 503)  # a rebalance or a table recovery: ask again shortly
MAX_PAGES = 10_000

#: Plain HTTP(S) only: no file:// or ftp:// for a URL a worker advertised, no proxy for
#: the workers' internal addresses; 307 redirects (to an aggregate's owner) are followed.
_opener = urllib.request.OpenerDirector()
for _handler in (
    urllib.request.HTTPHandler(),
    urllib.request.HTTPSHandler(),
    urllib.request.HTTPDefaultErrorHandler(),
    urllib.request.HTTPRedirectHandler(),
    urllib.request.HTTPErrorProcessor(),
):
    _opener.add_handler(_handler)


class Unanswered(Exception):  # noqa: N818 - an outcome the commands report, not a bug
    """A worker could not be asked, or did not answer in JSON; ``workers``: the members it
    named all the same (a worker that is rebalancing still lists them)."""

    def __init__(self, message: str, workers: list[str] | None = None) -> None:
        super().__init__(message)
        self.workers = workers or []


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """GET ``url``: (status, JSON object); Unanswered on anything else."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise Unanswered("not an http(s) URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - checked above
    try:
        with _opener.open(request, timeout=REQUEST_TIMEOUT) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise Unanswered(getattr(reason, "strerror", None) or str(reason) or type(exc).__name__) from exc
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise Unanswered(f"answered {status} without a JSON object")
    return status, body


def ask(url: str, wait: float) -> tuple[int, dict[str, Any]]:
    """``get_json``, asking again for up to ``wait`` s while the worker is rebalancing or recovering."""
    deadline = time.monotonic() + wait
    while True:
        status, body = get_json(url)
        if status not in BUSY or time.monotonic() >= deadline:
            return status, body
        time.sleep(0.5)


def default_url(settings: Settings) -> str:
    return (settings.worker_url or f"http://localhost:{settings.web_port or 6066}").rstrip("/")


# --------------------------------------------------------------------------- surveys


@dataclass
class Survey:
    """What every member of the group said about its parked and gapped aggregates."""

    answered: dict[str, list[int]] = field(default_factory=dict)  # worker URL -> its partitions
    unanswered: dict[str, str] = field(default_factory=dict)  # worker URL -> why not
    partition_count: int | None = None
    aggregates: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def missing_partitions(self) -> list[int]:
        reported = {p for parts in self.answered.values() for p in parts}
        return sorted(set(range(self.partition_count or 0)) - reported)

    @property
    def complete(self) -> bool:
        return not self.unanswered and self.partition_count is not None and not self.missing_partitions

    def oldest_first(self) -> list[dict[str, Any]]:
        return sorted(self.aggregates.values(), key=lambda a: sort_key(a.get("since"), str(a["aggregate_id"])))

    def problems(self) -> list[str]:
        out = [f"{url} did not answer: {why}" for url, why in sorted(self.unanswered.items())]
        if self.answered and self.missing_partitions:
            out.append(f"partitions {_numbers(self.missing_partitions)} were reported by no worker (a rebalance?)")
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "workers": {**{u: "ok" for u in self.answered}, **self.unanswered},
            "partition_count": self.partition_count,
            "missing_partitions": self.missing_partitions,
            "aggregates": self.oldest_first(),
        }


def survey(start: str, wait: float) -> Survey:
    """Ask ``start``, then every member any answer names, for all pages of /gaps."""
    found = Survey()
    queue, asked = [start.rstrip("/")], set()
    while queue:
        url = queue.pop(0)
        if url in asked:
            continue
        asked.add(url)
        try:
            first = _all_pages(url, wait, found)
        except Unanswered as exc:
            found.unanswered[url] = str(exc)
            queue.extend(w for w in exc.workers if w not in asked)
            continue
        worker = str(first.get("worker") or url).rstrip("/")
        asked.add(worker)  # asked by another name (localhost) before: not twice
        found.answered[worker] = list(first["partitions"])
        count = first.get("partition_count")
        if isinstance(count, int):
            found.partition_count = max(found.partition_count or 0, count)
        queue.extend(str(w).rstrip("/") for w in first.get("workers", []) if str(w).rstrip("/") not in asked)
    return found


def _all_pages(url: str, wait: float, found: Survey) -> dict[str, Any]:
    """Every page of one worker's /gaps into ``found``; returns its first page."""
    first: dict[str, Any] | None = None
    after: str | None = None
    for _ in range(MAX_PAGES):
        query = {"limit": str(MAX_PAGE), **({"after": after} if after else {})}
        status, body = ask(f"{url}/gaps?{urlencode(query)}", wait)
        if status != 200:
            named = [str(w).rstrip("/") for w in body.get("workers", [])]
            raise Unanswered(f"{status} {body.get('error', '')}".rstrip(), named)
        if not _well_formed(body):
            raise Unanswered("not a /gaps answer of seqguard")
        first = first or body
        for agg in body.get("aggregates", []):
            found.aggregates.setdefault(str(agg["aggregate_id"]), {**agg, "worker": body.get("worker", url)})
        after = body.get("next")
        if not after:
            return first
    raise Unanswered(f"more than {MAX_PAGES} pages")


def _well_formed(body: dict[str, Any]) -> bool:
    """An answer from a worker is input too: the fields the survey uses, with their types."""
    partitions, workers, aggregates = (body.get(k) for k in ("partitions", "workers", "aggregates"))
    return (
        isinstance(partitions, list)
        and all(type(p) is int for p in partitions)
        and isinstance(workers, list)
        and all(isinstance(w, str) for w in workers)
        and isinstance(aggregates, list)
        and all(isinstance(a, dict) and isinstance(a.get("aggregate_id"), str) for a in aggregates)
    )


# --------------------------------------------------------------------------- output


def printable(value: Any) -> str:
    """A cell for a terminal: control characters of an untrusted ID shown escaped, not obeyed."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s < 86_400 else f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def _numbers(values: list[int]) -> str:
    ranges: list[list[int]] = []
    for v in values:
        if ranges and ranges[-1][1] == v - 1:
            ranges[-1][1] = v
        else:
            ranges.append([v, v])
    return ranges_text(ranges)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def gap_rows(aggregates: list[dict[str, Any]]) -> list[list[str]]:
    header = ["aggregate", "partition", "status", "next", "missing", "parked", "waiting", "command"]
    rows = [header]
    for a in aggregates:
        parked = a.get("parked") or {}
        cells = [
            a["aggregate_id"],
            a.get("partition"),
            a.get("status"),
            a.get("next_expected"),
            ranges_text(a.get("missing") or []) if a.get("missing") else "-",
            f"{parked.get('reason')} at {parked.get('seq')}" if parked else "-",
            duration(a.get("waiting_seconds")),
            a.get("command"),
        ]
        rows.append([printable(c) for c in cells])
    return rows


def _iso(epoch: Any) -> str:
    return "-" if not isinstance(epoch, int | float) else datetime.fromtimestamp(epoch).isoformat(timespec="seconds")


def aggregate_lines(a: dict[str, Any]) -> list[tuple[str, Any]]:
    parked, opened = a.get("parked"), a.get("gap_open_since")
    return [
        ("aggregate", a.get("aggregate_id")),
        ("worker", a.get("worker")),
        ("partition", a.get("partition")),
        ("status", a.get("status")),
        ("next expected", a.get("next_expected")),
        ("last applied", a.get("last_applied")),
        ("buffered", ", ".join(str(n) for n in a.get("buffered") or []) or "-"),
        ("missing", ranges_text(a.get("missing") or [])),
        ("parked", f"at {parked['seq']} ({parked['reason']}) since {_iso(parked['since'])}" if parked else "no"),
        ("gap open", "no" if not opened else f"{duration(a.get('gap_age_seconds'))} (since {_iso(opened)})"),
        ("waits for", a.get("waits_for")),
        ("command", a.get("command")),
    ] + ([("or resolve", a.get("resolve"))] if a.get("resolve") not in (None, a.get("command")) else [])


# --------------------------------------------------------------------------- commands


def url_option(fn: Any) -> Any:
    fn = click.option(
        "--wait", default=15.0, show_default=True, help="Seconds to keep asking a worker that is rebalancing."
    )(fn)
    return click.option(
        "--url", help="A worker's web URL (default: SEQGUARD_WORKER_URL, else http://localhost:<SEQGUARD_WEB_PORT>)."
    )(fn)


def _echo_problems(found: Survey) -> None:
    for problem in found.problems():
        click.echo(f"seqguard: {printable(problem)}", err=True)


@click.command("gaps")
@url_option
@click.option("--json", "as_json", is_flag=True)
def gaps(url: str | None, wait: float, as_json: bool) -> None:
    """Aggregates parked or waiting on a gap, on every worker, the longest waiting first.

    Exit status 0, or 2 if a worker could not be asked (the list is then incomplete)."""
    found = survey(url or default_url(load_settings()), wait)
    held = found.oldest_first()
    if as_json:
        click.echo(json.dumps(found.as_json(), indent=2))
    elif held:
        click.echo(table(gap_rows(held)))
    if not as_json:
        click.echo(f"{len(held)} aggregate(s) parked or waiting on a gap; {_coverage(found)}")
    _echo_problems(found)
    raise SystemExit(EXIT_CLEAR if found.complete else EXIT_UNANSWERED)


def _coverage(found: Survey) -> str:
    reported = sorted({p for parts in found.answered.values() for p in parts})
    total = found.partition_count if found.partition_count is not None else "?"
    return f"{len(found.answered)} worker(s) answered for {len(reported)}/{total} partitions"


@click.command("aggregate")
@click.argument("aggregate_id")
@url_option
@click.option("--json", "as_json", is_flag=True)
def aggregate(aggregate_id: str, url: str | None, wait: float, as_json: bool) -> None:
    """One aggregate's state, from the worker that owns it (any worker redirects there).

    Exit status 0; 1 if no worker holds state for it; 2 if its owner could not be asked."""
    start = (url or default_url(load_settings())).rstrip("/")
    try:
        status, body = ask(f"{start}/aggregates/{quote(aggregate_id, safe='')}", wait)
    except Unanswered as exc:
        raise _fail(f"cannot ask {start}: {exc}") from None
    if as_json:
        click.echo(json.dumps(body, indent=2))
    if status == 200:
        if not as_json:
            click.echo(table([[name, printable(value)] for name, value in aggregate_lines(body)]))
        raise SystemExit(EXIT_CLEAR)
    where = f"partition {body.get('partition', '?')}, owner {body.get('owner') or 'unknown'}"
    click.echo(f"seqguard: {printable(aggregate_id)}: {printable(body.get('error', status))} ({where})", err=True)
    raise SystemExit(EXIT_HELD if status == 404 else EXIT_UNANSWERED)


def _fail(message: str) -> SystemExit:
    click.echo(f"seqguard: {printable(message)}", err=True)
    return SystemExit(EXIT_UNANSWERED)


@click.command("verify")
@url_option
@click.option("--json", "as_json", is_flag=True)
def verify(url: str | None, wait: float, as_json: bool) -> None:
    """After a replay or resolve: is any aggregate still parked or waiting on a gap?

    Exit status 0 if none on any worker; 1 if some (listed with what each waits for);
    2 if a worker could not be asked or a partition was reported by none (never "all clear")."""
    found = survey(url or default_url(load_settings()), wait)
    held = found.oldest_first()
    code = EXIT_UNANSWERED if not found.complete else EXIT_HELD if held else EXIT_CLEAR
    if as_json:
        click.echo(json.dumps({**found.as_json(), "ok": code == EXIT_CLEAR, "exit": code}, indent=2))
    else:
        for a in held:
            click.echo(
                printable(
                    f"{a['aggregate_id']} (partition {a.get('partition')}, {a.get('status')}, waiting "
                    f"{duration(a.get('waiting_seconds'))}): {a.get('waits_for')}"
                )
            )
            if a.get("command"):
                click.echo(f"    {printable(a['command'])}")
        if code == EXIT_CLEAR:
            click.echo(f"all clear: no aggregate parked or waiting on a gap; {_coverage(found)}")
        elif code == EXIT_HELD:
            click.echo(f"{len(held)} aggregate(s) parked or waiting on a gap; {_coverage(found)}")
        else:
            click.echo(f"cannot verify: not every worker answered; {_coverage(found)}")
    _echo_problems(found)
    raise SystemExit(code)


COMMANDS = (gaps, aggregate, verify)
