"""The operator page's HTML, rendered from plain values (no I/O).

Every value is escaped: aggregate IDs, event types and audit records come from the input
topic and from anyone who can write the audit topic. Markup is only what ``render`` builds
from this module's templates (``Html``); anything else passed in is text, escaped once.
The page has no script, no form and no external resource (the CSP forbids them).
"""

from __future__ import annotations

import html
import shlex
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tables.inspect import AggregateView
from workers.audit import AuditEntry, details, iso

T = TypeVar("T")

#: No scripts, no frames, no forms, nothing fetched: inline style only.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
#: Rows of held aggregates shown; the rest are counted.
MAX_ROWS = 200


class Html(str):
    """Markup that is safe as it is. Built only by ``esc``, ``render`` and ``join``."""


def esc(value: object) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def render(template: str, **values: object) -> Html:
    """``string.Template`` (``$name``, so CSS braces stay braces): every value escaped unless Html."""
    return Html(string.Template(template).substitute({k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[object], sep: str = "") -> Html:
    return Html(esc(sep).join(esc(p) for p in parts))


@dataclass(frozen=True)
class Reading(Generic[T]):
    """A value read from Kafka in the background: the last good one, and how the last try went."""

    value: T | None = None
    at: float | None = None  # when ``value`` was read
    error: str | None = None  # why the last read failed (None: it did not)
    pending: bool = False  # a read is under way


@dataclass(frozen=True)
class PageData:
    worker: str
    app_id: str
    input_topic: str
    dlq_topic: str
    audit_topic: str
    now: float
    state: str  # "ready", "recovering tables", "rebalancing"
    paused: dict[str, Any] | None
    partitions: list[int]
    standbys: list[int]
    held: list[AggregateView] | None  # None: not shown now (``held_note`` says why)
    held_note: str | None = None
    #: error class -> (waiting, of which over the replay limit: left for an operator)
    dlq: Reading[dict[str, tuple[int, int]]] = field(default_factory=Reading)
    audit: Reading[list[AuditEntry]] = field(default_factory=Reading)


def resolve_command(aggregate_id: str, skip_to: int) -> str:
    return (
        f'seqguard aggregates resolve {shlex.quote(aggregate_id)} --skip-to {skip_to} --reason "..." --operator "$USER"'
    )


def commands(v: AggregateView) -> list[tuple[str, str]]:
    """What lets the aggregate go on, as (what it does, the exact command)."""
    agg = shlex.quote(v.aggregate_id)
    if v.parked_at is not None and v.parked_reason != "gap":
        return [
            (
                "replay its dead-lettered event (--dry-run shows the plan first)",
                f"seqguard dlq replay --aggregate {agg}",
            ),
            (f"or give up on event {v.parked_at}", resolve_command(v.aggregate_id, v.parked_at + 1)),
        ]
    skip_to = v.missing[0][1] + 1 if v.missing else (v.parked_at or v.next_expected or 0) + 1
    if v.parked_at is not None:
        return [("give up on the missing events", resolve_command(v.aggregate_id, skip_to))]
    return [("skip the gap now (its timeout acts by itself)", resolve_command(v.aggregate_id, skip_to))]


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _held_row(v: AggregateView, now: float) -> Html:
    cmds = join(
        render('<div class="what">$what</div><code class="cmd">$cmd</code>', what=w, cmd=c) for w, c in commands(v)
    )
    status = v.status if v.parked_at is None else f"parked ({v.parked_reason})"
    return render(
        '<tr class="$cls"><td class="agg">$agg</td><td>$p</td><td>$status</td><td>$next</td><td>$buffered</td>'
        '<td class="waits">$waits</td><td>$since</td><td>$cmds</td></tr>',
        cls=v.status,
        agg=v.aggregate_id,
        p=v.partition,
        status=status,
        next="-" if v.next_expected is None else v.next_expected,
        buffered=_numbers(v.buffered),
        waits=v.waits_for(),
        since=age(None if v.since is None else now - v.since),
        cmds=cmds,
    )


def _numbers(numbers: tuple[int, ...], shown: int = 8) -> str:
    text = ", ".join(str(n) for n in numbers[:shown])
    return text + (f" (+{len(numbers) - shown})" if len(numbers) > shown else "") or "-"


def held_section(data: PageData) -> Html:
    if data.held is None:
        return render('<p class="note">$note</p>', note=data.held_note or "not available")
    if not data.held:
        return render('<p class="ok">None: every aggregate of partitions $p flows.</p>', p=_list(data.partitions))
    rows = join(_held_row(v, data.now) for v in data.held[:MAX_ROWS])
    more = len(data.held) - MAX_ROWS
    note = render('<p class="note">and $n more (longest waiting first)</p>', n=more) if more > 0 else ""
    head = (
        "<tr><th>aggregate</th><th>partition</th><th>status</th><th>next</th><th>buffered</th>"
        "<th>waits for</th><th>waiting</th><th>to resolve it</th></tr>"
    )
    return render('<table id="held">$head$rows</table>$note', head=Html(head), rows=rows, note=note)


def _reading_note(reading: Reading[Any], now: float, what: str) -> Html:
    if reading.value is None:
        why = reading.error or (f"reading {what}" if reading.pending else "not read yet")
        return render('<p class="note">unknown: $why (reload in a few seconds)</p>', why=why)
    note = f"as of {iso(reading.at)} ({age(now - (reading.at or now))} ago)"
    if reading.error:
        note += f"; the last read failed: {reading.error}"
    return render('<p class="note">$note</p>', note=note)


def dlq_section(data: PageData) -> Html:
    counts = data.dlq.value
    note = _reading_note(data.dlq, data.now, data.dlq_topic)
    if counts is None:
        return note
    if not counts:
        return render('<p class="ok">Nothing waits in $t.</p>$note', t=data.dlq_topic, note=note)
    rows = join(
        render("<tr><td>$c</td><td>$n</td><td>$over</td></tr>", c=c or "?", n=n, over=over)
        for c, (n, over) in sorted(counts.items(), key=lambda kv: -sum(kv[1]))
    )
    head = Html("<tr><th>error class</th><th>waiting</th><th>of which over the replay limit</th></tr>")
    cmd = "seqguard dlq list"
    return render(
        '<table id="dlq">$head$rows</table>$note<p><code>$cmd</code></p>', head=head, rows=rows, note=note, cmd=cmd
    )


def audit_section(data: PageData) -> Html:
    entries = data.audit.value
    note = _reading_note(data.audit, data.now, data.audit_topic)
    if entries is None:
        return note
    if not entries:
        return render('<p class="ok">No records in $t yet.</p>$note', t=data.audit_topic, note=note)
    rows = join(
        render(
            '<tr class="$kind"><td>$time</td><td>$kind</td><td class="agg">$agg</td><td>$details</td></tr>',
            time=iso(e.time),
            kind=e.kind,
            agg=e.aggregate or "-",
            details=details(e),
        )
        for e in reversed(entries)  # newest first
    )
    head = Html("<tr><th>time</th><th>kind</th><th>aggregate</th><th>details</th></tr>")
    return render('<table id="audit">$head$rows</table>$note', head=head, rows=rows, note=note)


def _list(numbers: Iterable[int]) -> str:
    return ", ".join(str(n) for n in sorted(numbers)) or "none"


def _status(data: PageData) -> Html:
    text = data.state
    if data.paused:
        p = data.paused
        text += f"; PAUSED: {p.get('dependency')} unavailable for {age(data.now - p.get('since', data.now))}"
        text += f", {p.get('event')} waits"
    return render('<p class="$cls">$text</p>', cls="bad" if data.paused or data.state != "ready" else "ok", text=text)


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}code{background:#f6f6f6;padding:0 .2em;white-space:pre-wrap;overflow-wrap:anywhere}
code.cmd{display:block;margin:.1em 0 .4em;user-select:all}.what{color:#555;font-size:.9em}
.agg{font-family:monospace;overflow-wrap:anywhere;max-width:24em}.note{color:#666}.ok{color:#262}.bad{color:#a00}
td.waits{max-width:18em}
tr.parked td{background:#fff4f4}
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>seqguard $worker</title><style>$style</style></head>
<body>
<h1>seqguard worker <code>$worker</code></h1>
$status
<p>app <code>$app</code>, input <code>$input</code>; page rendered $now</p>
<h2>Partitions owned</h2>
<p id="partitions">$input: $partitions$standbys</p>
<h2>Parked aggregates and open gaps ($held_count)</h2>
$held
<h2>DLQ waiting, by error class</h2>
$dlq
<h2>Last gap and operator records</h2>
$audit
</body></html>
"""


def page(data: PageData) -> Html:
    standbys = f" (standby tables: {_list(data.standbys)})" if data.standbys else ""
    return render(
        PAGE,
        style=Html(STYLE),
        worker=data.worker,
        status=_status(data),
        app=data.app_id,
        input=data.input_topic,
        now=iso(data.now),
        partitions=_list(data.partitions),
        standbys=standbys,
        held_count="?" if data.held is None else len(data.held),
        held=held_section(data),
        dlq=dlq_section(data),
        audit=audit_section(data),
    )
