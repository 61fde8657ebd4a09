"""The operator page: rendered from plain values, every one escaped; commands that resolve;
background reads that never hold a request up. No worker, no broker."""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.inspect import AggregateView
from workers.audit import AuditEntry, decode
from workers.web_page import Background, in_thread
from workers.web_page_template import CSP, Html, PageData, Reading, commands, esc, page, render

NOW = 1_700_000_000.0
#: Every tag the page's own templates use.
OURS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "table", "tr", "th", "td", "div"}


class Parsed(HTMLParser):
    def __init__(self, markup: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.texts: list[str] = []
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)

    def handle_data(self, data: str) -> None:
        self.texts.append(data)


def view(aggregate: str = "order-1", *, parked_at: int | None = 2, reason: str | None = "gap",
         buffered: tuple[int, ...] = (3, 4), missing: tuple[tuple[int, int], ...] = ((2, 2),)) -> AggregateView:  # fmt: skip
    return AggregateView(
        aggregate_id=aggregate,
        partition=1,
        next_expected=2,
        last_applied=1,
        buffered=buffered,
        missing=missing,
        parked_at=parked_at,
        parked_reason=reason if parked_at is not None else None,
        parked_since=NOW - 30 if parked_at is not None else None,
        gap_open_since=NOW - 40,
        gap_age_seconds=40.0,
        last_active=NOW - 30,
    )


def data(held: list[AggregateView] | None, *, audit: list[AuditEntry] | None = None, **over: object) -> PageData:
    fields: dict[str, object] = {
        "worker": "host:1",
        "app_id": "seqguard",
        "input_topic": "events",
        "dlq_topic": "events.dlq",
        "audit_topic": "seqguard.audit",
        "now": NOW,
        "state": "ready",
        "paused": None,
        "partitions": [0, 2],
        "standbys": [],
        "held": held,
        "dlq": Reading({"handler_exception": (2, 1)}, NOW - 3),
        "audit": Reading(audit if audit is not None else [], NOW - 1),
    }
    fields.update(over)
    return PageData(**fields)  # type: ignore[arg-type]


def test_markup_is_only_what_the_templates_build() -> None:
    assert esc("<b>&'\"") == "&lt;b&gt;&amp;&#x27;&quot;"
    assert esc(Html("<b>")) == "<b>"  # built markup is not escaped twice
    assert render("<p>$x</p>", x="<i>") == "<p>&lt;i&gt;</p>"
    assert "script-src" not in CSP and CSP.startswith("default-src 'none'; style-src 'unsafe-inline'")


hostile_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(aggregate=hostile_text, kind=hostile_text, error_class=hostile_text, worker=hostile_text)
def test_no_value_from_the_input_becomes_markup(aggregate: str, kind: str, error_class: str, worker: str) -> None:
    audited = decode(0, 0, None, None, json.dumps({"kind": kind, "aggregate": aggregate, "x": error_class}).encode())
    paused = {"dependency": worker, "since": NOW - 5, "event": aggregate}
    markup = page(
        data(
            [view(aggregate), view(aggregate, reason=error_class)],
            audit=[audited],
            worker=worker,
            dlq=Reading({error_class: (1, 0)}, NOW),
            paused=paused,
        )
    )
    parsed = Parsed(markup)
    assert parsed.tags <= OURS
    assert aggregate in parsed.texts  # shown as it is, in its own cell
    assert parsed.texts.count(kind) >= 1  # the audit record's kind too
    assert worker in " ".join(parsed.texts)


def test_a_script_id_is_text_and_its_commands_quote_it_for_the_shell() -> None:
    hostile = "<script>alert(1)</script>"
    markup = page(data([view(hostile)]))
    assert "<script>" not in markup and "&lt;script&gt;alert(1)&lt;/script&gt;" in markup
    texts = Parsed(markup).texts
    command = next(t for t in texts if t.startswith("seqguard aggregates resolve"))
    assert shlex.split(command)[3] == hostile


def test_each_kind_of_wait_gets_the_command_that_ends_it() -> None:
    gap = commands(view("it's", parked_at=2, reason="gap", buffered=(5, 6), missing=((2, 4),)))
    assert [shlex.split(c)[1:6] for _, c in gap] == [["aggregates", "resolve", "it's", "--skip-to", "5"]]
    dead = commands(view("order-1", parked_at=2, reason="timeout_exceeded", buffered=(3,), missing=()))
    assert [c for _, c in dead] == [
        "seqguard dlq replay --aggregate order-1",
        'seqguard aggregates resolve order-1 --skip-to 3 --reason "..." --operator "$USER"',
    ]
    open_gap = commands(view("order-1", parked_at=None, buffered=(4,), missing=((2, 3),)))
    assert "--skip-to 4" in open_gap[0][1] and "timeout" in open_gap[0][0]


def test_what_cannot_be_read_says_unknown_and_why() -> None:
    failed = Reading[dict[str, tuple[int, int]]](None, None, "no answer from Kafka within 60 s")
    markup = page(data(None, held_note="not shown while the worker is recovering tables", dlq=failed))
    assert "unknown: no answer from Kafka within 60 s" in markup
    assert "not shown while the worker is recovering tables" in markup
    assert "unknown: reading events.dlq" in page(data([], dlq=Reading(pending=True)))
    stale = page(data([], dlq=Reading({}, NOW - 90, "KafkaConnectionError: down")))
    assert "1.5 min ago" in stale and "the last read failed: KafkaConnectionError: down" in stale


def test_held_rows_are_capped() -> None:
    markup = page(data([view(f"order-{i}") for i in range(250)]))
    assert markup.count("<tr class=") == 200 and "and 50 more" in markup


# --------------------------------------------------------------------------- background reads


async def test_a_slow_read_never_holds_a_request_longer_than_its_wait() -> None:
    gate = asyncio.Event()

    async def slow() -> int:
        await gate.wait()
        return 7

    cached = Background(slow, every=30.0, timeout=10.0)
    started = time.monotonic()
    first = await cached.get(wait=0.2)
    assert time.monotonic() - started < 2.0
    assert first.value is None and first.pending
    gate.set()
    await asyncio.sleep(0.05)
    assert (await cached.get(wait=0.2)).value == 7
    await cached.close()


async def test_a_failed_read_is_shown_and_not_retried_before_its_interval() -> None:
    calls = []

    async def failing() -> int:
        calls.append(1)
        raise ConnectionError("refused\nsecond line")

    cached = Background(failing, every=30.0, timeout=1.0)
    got = await cached.get(wait=1.0)
    assert got.error == "ConnectionError: refused" and got.value is None and not got.pending
    await cached.get(wait=1.0)
    assert len(calls) == 1


async def test_a_read_past_its_timeout_is_an_error_not_a_hang() -> None:
    cached = Background(lambda: asyncio.sleep(10), every=30.0, timeout=0.1)
    await cached.get(wait=1.0)
    assert cached.reading().error == "no answer from Kafka within 0.1 s"


async def test_a_thread_read_returns_its_value_or_raises_its_error() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 3

    async def boom() -> int:
        raise ValueError("bad")

    assert await in_thread(value, 5.0) == 3
    with pytest.raises(ValueError, match="bad"):
        await in_thread(boom, 5.0)
    with pytest.raises(TimeoutError):
        await in_thread(lambda: asyncio.sleep(10), 0.1)
