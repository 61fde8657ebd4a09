"""The long-running DLQ agent (Procfile: `dlq`).

Every SEQGUARD_DLQ_AGENT_INTERVAL seconds it reads the DLQ, publishes counts of what is
waiting (by error class) as metrics and a log line, and replays by itself the records
whose error class is configured as transient (SEQGUARD_DLQ_AUTO_REPLAY, or a type's
``auto_replay`` in the policy file), each after a backoff that doubles with its replay
count. By default nothing is auto-replayed: it only reports.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client import Counter as Counter_

from tables.policy import PolicyBook
from workers import logs
from workers.dlq.records import DeadLetter
from workers.dlq.replay import Filters, execute, load_plan
from workers.policy_file import policy_book
from workers.settings import Settings

log = logging.getLogger(__name__)


def due(letter: DeadLetter, now: float, base_delay: float) -> bool:
    """Backoff: wait base * 2^replays after the last failure before replaying again."""
    return now - letter.last_failure >= base_delay * 2**letter.replay_count


def auto_replayable(letter: DeadLetter, book: PolicyBook) -> bool:
    return letter.error_class in book.for_type(letter.event_type).auto_replay


async def run_once(
    settings: Settings, waiting: Gauge | None = None, now: float | None = None, replayed: Counter_ | None = None
) -> int:
    """One pass: report, then auto-replay what is due. Returns how many were republished."""
    now = time.time() if now is None else now
    plan = await load_plan(settings, Filters())
    counts = Counter(letter.error_class for letter in plan.replay + plan.over_limit)
    if waiting is not None:
        waiting.clear()
        for error_class, n in counts.items():
            waiting.labels(error_class).set(n)
    base = max(settings.retry_base_delay, 1.0)
    book = policy_book(settings)
    chosen = [letter for letter in plan.replay if auto_replayable(letter, book) and due(letter, now, base)]
    log.info(
        "DLQ: %s waiting %s; %d over the replay limit; auto-replaying %d",
        sum(counts.values()),
        dict(counts),
        len(plan.over_limit),
        len(chosen),
        extra=logs.fields(
            waiting=sum(counts.values()),
            by_error_class=dict(counts),
            over_limit=len(plan.over_limit),
            auto_replaying=[f"{letter.aggregate_id}#{letter.sequence}" for letter in chosen[:100]],
        ),
    )
    if not chosen:
        return 0
    plan.replay = chosen
    sent = await execute(settings, plan, by="seqguard dlq agent")
    if replayed is not None:
        for error_class, n in Counter(letter.error_class for letter in chosen[:sent]).items():
            replayed.labels(error_class).inc(n)
    return sent


async def run_forever(settings: Settings) -> None:
    registry = CollectorRegistry()
    waiting = Gauge("seqguard_dlq_waiting_records", "DLQ records not yet replayed", ["error_class"], registry=registry)
    replayed = Counter_(
        "seqguard_dlq_replayed", "DLQ records auto-replayed by the agent", ["error_class"], registry=registry
    )
    if settings.web_port:
        start_http_server(settings.web_port, addr=settings.web_host, registry=registry)
    while True:
        try:
            await run_once(settings, waiting, replayed=replayed)
        except Exception:
            log.exception("DLQ agent pass failed; trying again next interval")
        await asyncio.sleep(settings.dlq_agent_interval)
