"""The long-running DLQ agent (Procfile: `dlq`).

Every SEQGUARD_DLQ_AGENT_INTERVAL seconds it brings its index of the DLQ up to date (read
in full once at start-up, then only what was appended: workers/dlq/index.py), publishes
counts of what is waiting (by error class) as metrics and a log line, and replays by itself
the records whose error class is configured as transient (SEQGUARD_DLQ_AUTO_REPLAY, or a
type's ``auto_replay`` in the policy file), each after a backoff that doubles with its replay
count. By default nothing is auto-replayed: it only reports.

SIGTERM or SIGINT stops it like the worker: the chunk in flight is republished, audited and
marked, no other chunk starts, and it exits 0. A pass still reading is abandoned (reading
changes nothing). Its web server (workers/dlq/agent_web.py) serves /metrics, /livez,
/readyz and /healthz.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as Counter_

from tables.health import AgentFacts, agent_not_ready
from tables.policy import PolicyBook
from workers import logs
from workers.dlq.index import DeadLetterIndex
from workers.dlq.records import DeadLetter
from workers.dlq.replay import execute
from workers.policy_file import policy_book
from workers.settings import Settings

log = logging.getLogger(__name__)

#: With a replay rate, a chunk takes at most this long: a stop waits for no more (docker stop gives 10 s).
CHUNK_SECONDS = 5.0


def due(letter: DeadLetter, now: float, base_delay: float) -> bool:
    """Backoff: wait base * 2^replays after the last failure before replaying again."""
    return now - letter.last_failure >= base_delay * 2**letter.replay_count


def auto_replayable(letter: DeadLetter, book: PolicyBook) -> bool:
    return letter.error_class in book.for_type(letter.event_type).auto_replay


def chunk_size(settings: Settings) -> int:
    """SEQGUARD_DLQ_AGENT_CHUNK, and no more than CHUNK_SECONDS of records at SEQGUARD_REPLAY_RATE."""
    if settings.replay_rate:
        return max(1, min(settings.dlq_agent_chunk, int(settings.replay_rate * CHUNK_SECONDS)))
    return settings.dlq_agent_chunk


class AgentMetrics:
    """The agent's own registry: what waits, what it replayed, and whether its passes succeed."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.waiting = Gauge(
            "seqguard_dlq_waiting_records", "DLQ records not yet replayed", ["error_class"], registry=r
        )
        self.replayed = Counter_(
            "seqguard_dlq_replayed", "DLQ records auto-replayed by the agent", ["error_class"], registry=r
        )
        self.up = Gauge(
            "seqguard_dlq_agent_up", "1 while the DLQ agent's passes succeed, 0 after a failed one", registry=r
        )
        self.last_pass = Gauge(
            "seqguard_dlq_agent_last_pass_timestamp_seconds", "When the last successful pass ended", registry=r
        )


async def run_once(
    settings: Settings, waiting: Gauge | None = None, now: float | None = None, replayed: Counter_ | None = None
) -> int:
    """One pass from scratch (the whole DLQ read): report, then auto-replay what is due."""
    index = DeadLetterIndex(settings)
    await index.refresh()
    return await replay_due(settings, index, waiting=waiting, now=now, replayed=replayed)


async def replay_due(
    settings: Settings,
    index: DeadLetterIndex,
    *,
    waiting: Gauge | None = None,
    now: float | None = None,
    replayed: Counter_ | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Report what ``index`` holds, then auto-replay what is due. Returns how many were republished."""
    now = time.time() if now is None else now
    plan = index.plan()
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

    def chunk_done(part: list[DeadLetter]) -> None:  # counted as chunks are marked: a stop keeps the count
        if replayed is not None:
            for error_class, n in Counter(letter.error_class for letter in part).items():
                replayed.labels(error_class).inc(n)

    sent = await execute(
        settings,
        plan,
        by="seqguard dlq agent",
        chunk=chunk_size(settings),
        should_stop=should_stop,
        on_chunk=chunk_done,
    )
    if sent < len(chosen):
        log.info("DLQ agent stopping: replayed %d of %d due; the rest waits for the next start", sent, len(chosen))
    return sent


class Agent:
    """The agent's state between passes: its index, metrics and how its passes went."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = DeadLetterIndex(settings)
        self.metrics = AgentMetrics()
        self.stop = asyncio.Event()
        self.passes = 0
        self.last_error: str | None = None

    def not_ready(self) -> list[str]:
        return agent_not_ready(AgentFacts(self.passes, self.last_error))

    async def one_pass(self) -> None:
        """Read what is new (abandoned if a stop comes meanwhile), then replay what is due, chunk
        by chunk until a stop; the outcome goes to the up-metric and /readyz."""
        try:
            if not await self._read_unless_stopped():
                return
            await replay_due(
                self.settings,
                self.index,
                waiting=self.metrics.waiting,
                replayed=self.metrics.replayed,
                should_stop=self.stop.is_set,
            )
        except Exception as exc:
            log.exception("DLQ agent pass failed; trying again next interval")
            text = str(exc)  # aiokafka's errors name their class already
            self._record((text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}")[:300])
        else:
            self._record(None)

    async def _read_unless_stopped(self) -> bool:
        reading = asyncio.ensure_future(self.index.refresh())
        stopping = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not reading.done():  # reading changes nothing until it completed: drop it
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            return False
        reading.result()  # its error, if any
        return True

    def _record(self, error: str | None) -> None:
        self.passes += 1
        self.last_error = error
        self.metrics.up.set(0 if error else 1)
        if error is None:
            self.metrics.last_pass.set(time.time())

    async def run(self) -> None:
        """Passes every SEQGUARD_DLQ_AGENT_INTERVAL until ``stop`` is set."""
        while not self.stop.is_set():
            await self.one_pass()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.settings.dlq_agent_interval)


async def run_forever(settings: Settings) -> None:
    """The agent until SIGTERM or SIGINT; returns (exit 0) once the chunk in flight is marked."""
    from workers.dlq.agent_web import serve

    agent = Agent(settings)
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        if not agent.stop.is_set():
            log.info("%s: stopping after the chunk in flight", signal.Signals(signum).name)
        agent.stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop, signum)
    web = await serve(settings, agent) if settings.web_port else None
    try:
        await agent.run()
    finally:
        if web is not None:
            await web.cleanup()
    log.info("DLQ agent stopped")
