"""Chaos: three workers, SIGKILLed at random every few seconds and SIGSTOPped into zombies,
while events keep flowing; then nothing may be lost, doubled, reordered, gap-skipped or
dead-lettered, and every aggregate's state must be right.

The input (tests/integration/chaos_domain.py is the domain): N events over A aggregates,
interleaved as producers write them (a few dozen aggregates active at a time), produced at a
steady rate while the chaos runs. 10% of the events are sent late, by up to half the gap
timeout (a window shuffle in time: their successors overtake them and wait in the reorder
buffer, so buffered state is always there for a kill to interrupt); 5% are duplicated; 1%
carry ``fail_first``: their handler fails its first attempt with a transient error and
succeeds on the retry. None of it is cause for a gap or a dead letter: every event arrives,
no gap is open for longer than half the gap timeout, and retries succeed.

The chaos, while the input is produced: every few seconds a random worker is SIGKILLed and
a replacement started (same deployment: same group, tables, topics); at scheduled points a
worker is instead SIGSTOPped for twice the session timeout (its partitions move on without
it) and then SIGCONTed: a zombie that wakes up mid-batch and must neither crash nor write
stale state. A worker that exits on its own is replaced (as a supervisor would) and counted.

Then, once the output topic holds every event (condition-based, generous deadline), the
checks read the output, DLQ and audit topics, the state changelog and Redis:
lost, doubled effects, order violations, gaps, DLQ records, wrong final states, unexpected
worker exits. A re-emission (the same event id on the output twice, possible after a
crash without transactions) is allowed and counted. Recovery per kill: from the SIGKILL to
its replacement's /healthz 200 and the output topic advancing again after that.

Short form (the default, CI: 15,000 events over 1,000 aggregates in one minute, >= 5 kills,
one zombie; on a 2-core machine about 1.5 minutes when it passes, under 3 when it fails, as it
then waits STALL seconds for the missing events):

    .venv/bin/pytest tests/integration/test_chaos.py -s

Long form (100,000 events over 5,000 aggregates in 4 minutes, >= 20 kills, two zombie
episodes; about 5 minutes when it passes, 6 to 7 when it fails):

    SEQGUARD_CHAOS=long .venv/bin/pytest tests/integration/test_chaos.py -s

Controls, each form's input with no kills and no zombies (when the chaos fails, they tell a
recovery bug from a bug in the plain path or in the test's input): SEQGUARD_CHAOS=calm and
SEQGUARD_CHAOS=long-calm.

SEQGUARD_CHAOS_SEED=<n> replays a run's input and chaos choices (the seed is printed; the
timing of kills against the workers' progress never replays exactly). The report is printed
(-s) and written to .pytest_cache/logs/chaos-<mode>.json; worker logs are beside it.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import random
import re
import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from tables.changelog import STATE_TABLE
from tests.harness import (
    FAST_KAFKA,
    LOGS,
    Deployment,
    Worker,
    changelog_content,
    committed_offsets,
    consume_all,
    event,
    metric_value,
)
from tests.integration import chaos_domain as domain
from workers.dlq.records import ERROR_CLASS
from workers.effects import Effects


@dataclass(frozen=True)
class Mode:
    name: str
    aggregates: int
    per_aggregate: int
    produce_s: float  # the input flows at a steady rate for this long, while the chaos runs
    min_kills: int  # the chaos goes on past the input until it made this many kills
    zombie_after: tuple[int, ...]  # a zombie episode after this many kills (one per entry)
    kill_every: tuple[float, float]  # pause before each kill, from a replacement's recovery
    drain_deadline: float  # after the chaos, for the output topic to hold every event
    timeout: int  # the whole test
    faults: bool = True  # False: the same input with no kills and no zombies (a control)


MODES = {
    "short": Mode("short", 1_000, 15, 60.0, 5, (2,), (2.0, 5.0), 240.0, 600),
    "long": Mode("long", 5_000, 20, 240.0, 20, (4, 14), (2.0, 5.0), 900.0, 2_400),
    # Each form's input with no faults (controls): if one fails, the input or the product's
    # plain path is at fault, not its recovery.
    "calm": Mode("calm", 1_000, 15, 60.0, 0, (), (0.0, 0.0), 240.0, 600, faults=False),
    "long-calm": Mode("long-calm", 5_000, 20, 240.0, 0, (), (0.0, 0.0), 900.0, 2_400, faults=False),
}
MODE_NAME = os.environ.get("SEQGUARD_CHAOS", "short") or "short"
if MODE_NAME not in MODES:
    raise ValueError(f"SEQGUARD_CHAOS={MODE_NAME!r}: expected one of {sorted(MODES)}")
MODE = MODES[MODE_NAME]

WORKERS = 3
ACTIVE = 64  # aggregates being written at a time: an aggregate's events are ~ACTIVE records apart
LATE, DUPLICATED, FAIL_FIRST = 0.10, 0.05, 0.01
SESSION_TIMEOUT = float(FAST_KAFKA["SEQGUARD_SESSION_TIMEOUT"])
ZOMBIE_FOR = 2 * SESSION_TIMEOUT
GAP_TIMEOUT = 3.0  # shorter than a recovery: a gap clock that runs while nobody owns the partition fires
#: A late event is sent up to this much after its place: its successors overtake it and wait
#: for it in the reorder buffer, never longer than a third of the gap timeout. No event is ever
#: sent before its place, so no gap in the input stays open longer than this.
MAX_DELAY = GAP_TIMEOUT / 3
#: A duplicate is sent up to this much after its original (never before it: an early copy
#: would be an event arriving ahead of its place, opening a gap of unbounded length).
DUPLICATE_AFTER = 0.2
ENV = {
    "SEQGUARD_DOMAINS": "tests.integration.chaos_domain",
    "SEQGUARD_PARTITIONS": "8",
    "SEQGUARD_GAP_TIMEOUT": str(GAP_TIMEOUT),
    "SEQGUARD_GAP_CHECK_INTERVAL": "0.5",
    "SEQGUARD_HANDLER_ATTEMPTS": "3",
    "SEQGUARD_RETRY_BASE_DELAY": "0.02",
    # A worker refuses to start if one event's attempts could outlast the rebalance timeout (3 s here).
    "SEQGUARD_HANDLER_TIMEOUT": "0.8",
}
GAP_KINDS = ("gap_skipped", "gap_parked")
#: After the chaos: this long without new output while events are missing ends the wait (a
#: recovery takes seconds; a minute of silence means the missing events are not coming).
STALL = 60.0
#: Worker log lines worth quoting when a check fails.
LOG_PATTERNS = {
    "critical": re.compile(r"CRITICAL|Traceback|exited|os\._exit"),
    "error": re.compile(r"\bERROR\b"),
    "gap": re.compile(r"gap", re.IGNORECASE),
    "late": re.compile(r"late event|order_violation"),
    "dead_lettered": re.compile(r"dead.lettered"),
    "counter": re.compile(r"non-negative"),
    "parked": re.compile(r"parked"),
}


# --------------------------------------------------------------------------- input


@dataclass
class Input:
    records: list[tuple[float, Any]]  # (when to send it, in s from the start; the record), in sending order
    expected: dict[str, int]  # aggregate -> its last sequence
    fail_first: set[str]  # ids of the events that fail their first attempt
    stats: dict[str, Any] = field(default_factory=dict)


def event_type(seq: int, last: int) -> str:
    return domain.OPENED if seq == 1 else domain.CLOSED if seq == last else domain.STEP


def interleaved(aggregates: int, per_aggregate: int, rng: random.Random) -> list[tuple[str, int]]:
    """(aggregate, seq) as producers write them: ACTIVE aggregates at a time, each in order."""
    pending = deque(range(aggregates))
    active: list[list[int]] = []  # [aggregate, next seq]
    out: list[tuple[str, int]] = []
    while pending or active:
        while pending and len(active) < ACTIVE:
            active.append([pending.popleft(), 1])
        slot = rng.randrange(len(active))
        agg = active[slot]
        out.append((f"chaos-{agg[0]}", agg[1]))
        agg[1] += 1
        if agg[1] > per_aggregate:
            active[slot] = active[-1]
            active.pop()
    return out


def arrivals_ahead(stream: list[tuple[str, int]]) -> int:
    """Events that arrive after a higher sequence of their aggregate (first arrivals only)."""
    highest: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    ahead = 0
    for agg, seq in stream:
        if (agg, seq) in seen:
            continue
        seen.add((agg, seq))
        ahead += seq < highest.get(agg, 0)
        highest[agg] = max(highest.get(agg, 0), seq)
    return ahead


def make_input(mode: Mode, rng: random.Random) -> Input:
    """The events at a steady rate over ``mode.produce_s``; LATE of them sent up to MAX_DELAY
    after their place (a window shuffle in time); DUPLICATED copies sent up to DUPLICATE_AFTER
    after their original; FAIL_FIRST marked ``fail_first``.

    Not the harness's with_duplicates: it can insert a copy before its original (insertions
    shift the places of later ones), by thousands of records in a long stream, so an event
    arrives seconds early and its predecessors' gap legitimately times out."""
    order = interleaved(mode.aggregates, mode.per_aggregate, rng)
    step = mode.produce_s / len(order)
    late = set(rng.sample(range(len(order)), int(len(order) * LATE)))
    fail_first = {f"{a}-{s}" for a, s in rng.sample(order, int(len(order) * FAIL_FIRST))}
    timed = sorted(
        (i * step + (rng.uniform(0, MAX_DELAY) if i in late else 0.0), a, s) for i, (a, s) in enumerate(order)
    )
    copies = [
        (t + rng.uniform(0, DUPLICATE_AFTER), a, s) for t, a, s in rng.sample(timed, int(len(timed) * DUPLICATED))
    ]
    timed = sorted(timed + copies)
    records = [
        (
            t,
            event(
                a,
                s,
                event_type(s, mode.per_aggregate),
                {"n": s, **({"fail_first": True} if f"{a}-{s}" in fail_first else {})},
            ),
        )
        for t, a, s in timed
    ]
    stats = {
        "events": len(order),
        "records": len(records),
        "duplicates": len(records) - len(order),
        "late": len(late),
        "max_delay_s": MAX_DELAY,
        "arrive_ahead_of_a_predecessor": arrivals_ahead([(a, s) for _, a, s in timed]),
        "fail_first": len(fail_first),
        "rate_per_s": round(len(order) / mode.produce_s),
    }
    return Input(records, {f"chaos-{a}": mode.per_aggregate for a in range(mode.aggregates)}, fail_first, stats)


async def produce_paced(bootstrap: str, topic: str, records: list[tuple[float, Any]], stats: dict[str, float]) -> None:
    """Send each record at its time (one producer; a record whose time has passed goes at once).

    ``stats`` gets how far the producer fell behind its schedule and its longest pause between
    two sends: a pause adds to how long the input leaves a gap open (see failed_checks)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        started = last = time.monotonic()
        behind = pause = 0.0
        futures = []
        for at, (key, headers, value) in records:
            ahead = at - (time.monotonic() - started)
            slept = ahead if ahead > 0.01 else 0.0
            if slept:
                await asyncio.sleep(slept)
            futures.append(await producer.send(topic, value, key=key, headers=headers))
            now = time.monotonic()
            behind, pause = max(behind, now - started - at), max(pause, now - last - slept)
            last = now
            stats.update(behind_s=round(behind, 3), longest_pause_s=round(pause, 3))
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# --------------------------------------------------------------------------- the output, live


class OutputTail:
    """Reads the output topic from its start while the test runs: progress and recovery times."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.applied: set[tuple[str, int]] = set()
        self.expected = 0  # distinct (aggregate, seq) the input holds
        self.count = 0
        self.arrivals: list[float] = []  # monotonic time of each fetch that brought records
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        consumer = self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        await consumer.start()
        await consumer.topics()  # all topics' metadata: naming one would auto-create it (Tansu)
        tps = [TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or ())]
        assert tps, f"output topic {self.topic} does not exist"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._task = asyncio.ensure_future(self._run(consumer))

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=200)
            got = 0
            for records in batch.values():
                for r in records:
                    self.applied.add((r.key.decode(), json.loads(r.value)["sequence"]))
                got += len(records)
            if got:
                self.count += got
                self.arrivals.append(time.monotonic())

    def check(self) -> None:
        if self._task is not None and self._task.done():
            self._task.result()  # raises what stopped the tail
            raise AssertionError("the output tail stopped")

    def complete(self) -> bool:
        return 0 < self.expected <= len(self.applied)

    def first_arrival_after(self, t: float) -> float | None:
        i = bisect.bisect_right(self.arrivals, t)
        return self.arrivals[i] if i < len(self.arrivals) else None

    async def advanced_after(self, t: float, timeout: float) -> float | None:
        """When records first arrived after ``t`` (None if not within ``timeout``, or if the
        output already holds every expected event: nothing more is due)."""
        deadline = time.monotonic() + timeout
        while (at := self.first_arrival_after(t)) is None and time.monotonic() < deadline and not self.complete():
            self.check()
            await asyncio.sleep(0.05)
        return at

    async def quiet(self, seconds: float, timeout: float) -> None:
        """Until nothing arrived for ``seconds`` (re-emissions of a late batch, the last sweeps)."""
        deadline = time.monotonic() + timeout
        while self.arrivals and time.monotonic() - self.arrivals[-1] < seconds and time.monotonic() < deadline:
            self.check()
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()


# --------------------------------------------------------------------------- the chaos


def name(worker: Worker) -> str:
    return worker.log_path.stem


@dataclass
class Chaos:
    deployment: Deployment
    tail: OutputTail
    rng: random.Random
    workers: list[Worker] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    t0_wall: float = field(default_factory=time.time)  # the same instant as t0, to place log lines and audit records
    generation: int = 0
    kills: list[dict[str, Any]] = field(default_factory=list)
    zombies: list[dict[str, Any]] = field(default_factory=list)
    exits: list[dict[str, Any]] = field(default_factory=list)  # workers that exited on their own
    killed: set[int] = field(default_factory=set)  # pids the chaos SIGKILLed
    measuring: list[asyncio.Future[None]] = field(default_factory=list)

    def since(self, t: float) -> float:
        return round(t - self.t0, 2)

    def spawn(self, slot: int) -> Worker:
        self.generation += 1
        worker = Worker(self.deployment, f"s{slot}g{self.generation}")
        if slot < len(self.workers):
            self.workers[slot] = worker
        else:
            self.workers.append(worker)
        return worker

    async def start(self) -> None:
        started = [self.spawn(slot) for slot in range(WORKERS)]
        await asyncio.gather(*(w.ready(timeout=120) for w in started))

    async def ready(self, worker: Worker) -> bool:
        """Wait for a new worker; one that exits first is left to the next reap (recorded, replaced)."""
        try:
            await worker.ready(timeout=120)
            return True
        except AssertionError:
            return False

    async def reap(self) -> None:
        """Replace each worker that exited without being killed, and record its exit."""
        for slot, worker in enumerate(list(self.workers)):
            if worker.alive or worker.proc.pid in self.killed:
                continue
            self.exits.append(
                {
                    "worker": name(worker),
                    "returncode": worker.proc.returncode,
                    "at": self.since(time.monotonic()),
                    "log": str(worker.log_path),
                    "tail": worker.tail(15),
                }
            )
            print(f"  ! {name(worker)} exited by itself with {worker.proc.returncode}; replacing it")
            await self.ready(self.spawn(slot))

    async def run(self, mode: Mode, producing: asyncio.Future[None]) -> None:
        if not mode.faults:
            while not producing.done():
                await self.reap()
                await asyncio.sleep(0.5)
            return
        while not (producing.done() and len(self.kills) >= mode.min_kills and self.zombies_done(mode)):
            await asyncio.sleep(self.rng.uniform(*mode.kill_every))
            await self.reap()
            if not self.zombies_done(mode) and len(self.kills) >= mode.zombie_after[len(self.zombies)]:
                await self.zombie()
            else:
                await self.kill_one()

    def zombies_done(self, mode: Mode) -> bool:
        return len(self.zombies) >= len(mode.zombie_after)

    async def kill_one(self) -> None:
        slot = self.rng.randrange(len(self.workers))
        victim = self.workers[slot]
        killed_at = time.monotonic()
        self.killed.add(victim.proc.pid)
        victim.kill()
        replacement = self.spawn(slot)
        record: dict[str, Any] = {
            "kill": len(self.kills) + 1,
            "victim": name(victim),
            "at": self.since(killed_at),
            "wall": time.strftime("%H:%M:%S", time.localtime(self.t0_wall + killed_at - self.t0)),
        }
        self.kills.append(record)
        if not await self.ready(replacement):
            record["replacement_failed"] = name(replacement)
            return
        ready_at = time.monotonic()
        # Measured beside the chaos, which goes on: when the replacement receives its first events.
        self.measuring.append(asyncio.ensure_future(self.processing(record, replacement, killed_at, timeout=60)))
        advanced_at = await self.tail.advanced_after(ready_at, timeout=20)
        record.update(
            replacement=name(replacement),
            ready_s=round(ready_at - killed_at, 2),
            output_advanced_s=None if advanced_at is None else round(advanced_at - killed_at, 2),
        )
        # Recovered: the replacement is ready and the output advanced after that.
        record["recovery_s"] = record["output_advanced_s"]
        print(f"  kill {record['kill']} at {record['at']} s: {record['victim']} -> {record['replacement']}: {record}")

    async def processing(self, record: dict[str, Any], worker: Worker, killed_at: float, timeout: float) -> None:
        """Record when ``worker`` received its first events (None if not within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and worker.alive and not self.tail.complete():
            try:
                if metric_value(await asyncio.to_thread(worker.metrics), "seqguard_events_received_total") > 0:
                    record["replacement_processing_s"] = round(time.monotonic() - killed_at, 2)
                    return
            except (OSError, AssertionError):
                pass
            await asyncio.sleep(0.2)
        record["replacement_processing_s"] = None

    async def zombie(self) -> None:
        slot = self.rng.randrange(len(self.workers))
        zombie = self.workers[slot]
        frozen_at = time.monotonic()
        zombie.freeze()
        record: dict[str, Any] = {
            "zombie": name(zombie),
            "at": self.since(frozen_at),
            "wall": time.strftime("%H:%M:%S", time.localtime(self.t0_wall + frozen_at - self.t0)),
            "frozen_s": ZOMBIE_FOR,
        }
        self.zombies.append(record)
        await asyncio.sleep(ZOMBIE_FOR)  # its session expires: the group moves its partitions on
        zombie.thaw()
        thawed_at = time.monotonic()
        advanced_at = await self.tail.advanced_after(thawed_at, timeout=30)
        await asyncio.sleep(2 * SESSION_TIMEOUT)  # time to notice it was fenced and rejoin, or to crash
        record.update(
            output_advanced_after_thaw_s=None if advanced_at is None else round(advanced_at - thawed_at, 2),
            alive_after_s=2 * SESSION_TIMEOUT,
            alive=zombie.alive,
            returncode=zombie.proc.returncode,
        )
        print(f"  zombie {len(self.zombies)} at {record['at']} s: {record}")


async def drain(chaos: Chaos, tail: OutputTail, expected: set[tuple[str, int]], deadline: float) -> dict[str, Any]:
    """Until the output holds every expected event (workers that exit are replaced meanwhile);
    or until it stalled: nothing new for STALL s while events are missing (they are not coming:
    lost, or held by a parked aggregate); or the deadline."""
    started = time.monotonic()
    while not expected <= tail.applied:
        now = time.monotonic()
        if now - max(started, tail.arrivals[-1] if tail.arrivals else started) > STALL:
            return {
                "outcome": f"stalled: no output for {STALL:g} s",
                "s": None,
                "missing": len(expected - tail.applied),
            }
        if now > started + deadline:
            return {"outcome": f"deadline of {deadline:g} s", "s": None, "missing": len(expected - tail.applied)}
        tail.check()
        await chaos.reap()
        await asyncio.sleep(0.5)
    return {"outcome": "complete", "s": round(time.monotonic() - started, 1), "missing": 0}


# --------------------------------------------------------------------------- the checks


def check_output(records: list[Any], expected: dict[str, int]) -> dict[str, Any]:
    """Lost events, order violations (first emissions out of order), re-emissions."""
    by_agg: dict[str, list[tuple[int, str]]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        body = json.loads(r.value)
        by_agg.setdefault(r.key.decode(), []).append((body["sequence"], body["id"]))
    lost, disorder, unexpected, re_emitted = [], [], [], 0
    for agg, n in expected.items():
        emitted = by_agg.get(agg, [])
        firsts = [seq for seq, _ in dict.fromkeys(emitted)]  # re-emissions dropped: first emission of each id
        re_emitted += len(emitted) - len(firsts)
        lost += [(agg, s) for s in sorted(set(range(1, n + 1)) - set(firsts))]
        if firsts != sorted(firsts) or len(firsts) != len(set(firsts)):
            disorder.append((agg, [seq for seq, _ in emitted]))
        unexpected += [(agg, s) for s in firsts if not 1 <= s <= n]
    unexpected += [(agg, seq) for agg in set(by_agg) - set(expected) for seq, _ in by_agg[agg]]
    return {
        "output_records": len(records),
        "lost": lost,
        "order_violations": disorder,
        "re_emitted": re_emitted,
        "unexpected": unexpected,
    }


async def check_redis(redis_url: str, prefix: str, expected: dict[str, int]) -> dict[str, Any]:
    """Per aggregate: its history (one entry per applied event, in applied order) and state."""
    redis = Redis.from_url(redis_url)
    try:
        effects = Effects(redis, prefix=prefix)
        pipe = redis.pipeline(transaction=False)
        for agg in expected:
            _, state_key, history_key = effects.aggregate_keys(domain.DOMAIN, agg)
            pipe.lrange(history_key, 0, -1)
            pipe.hget(state_key, "state")
        replies = await pipe.execute()
        failed_first = {m.decode() for m in await redis.smembers(prefix + domain.FAILED_FIRST)}
        absorbed = int(await redis.get(prefix + domain.ABSORBED) or 0)
    finally:
        await redis.aclose()
    doubled, wrong_history, wrong_state = 0, [], []
    for i, (agg, n) in enumerate(expected.items()):
        history = [h.decode() for h in replies[2 * i]]
        state = (replies[2 * i + 1] or b"").decode()
        doubled += len(history) - len(set(history))
        if history != [domain.label(s, event_type(s, n)) for s in range(1, n + 1)]:
            wrong_history.append((agg, history))
        if state != "closed":
            wrong_state.append((agg, state))
    return {
        "effects_doubled": doubled,
        "effect_histories_wrong": wrong_history,
        "domain_states_wrong": wrong_state,
        "failed_first": failed_first,
        "effects_absorbed_by_markers": absorbed,
    }


def applied_fail_first(records: list[Any], fail_first: set[str]) -> set[str]:
    """The fail_first events the output holds (those lost never ran their handler)."""
    return {event_id for r in records if (event_id := json.loads(r.value)["id"]) in fail_first}


def gap_times(gaps: list[dict[str, Any]], t0_wall: float) -> list[str]:
    """When each gap was recorded (s since the chaos began), by which worker, for what."""
    return [
        f"{a['at'] - t0_wall:.1f} s {a['worker']} {a['kind']} {a['aggregate']} {a.get('first', a.get('seq'))}..{a.get('last', '')}"
        for a in gaps
    ]


def check_state_table(table: dict[str, Any], expected: dict[str, int]) -> list[tuple[str, Any]]:
    """Aggregates whose state record (as its changelog says) is not 'next n+1, nothing held'."""
    wrong = []
    for agg, n in expected.items():
        view = table.get(agg)
        if view is None or view["n"] != n + 1 or view["buffer"] or view["p"] is not None:
            wrong.append((agg, view and {k: view[k] for k in ("n", "p", "buffer")}))
    return wrong


def log_findings(deployment: Deployment) -> dict[str, Any]:
    """Per pattern: matching lines in all of this run's worker logs, with a few samples."""
    found: dict[str, Any] = {}
    for path in sorted(LOGS.glob(f"{deployment.name}-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            for kind, pattern in LOG_PATTERNS.items():
                if pattern.search(line):
                    entry = found.setdefault(kind, {"lines": 0, "samples": []})
                    entry["lines"] += 1
                    if len(entry["samples"]) < 6:
                        entry["samples"].append(f"{path.name}: {line[:300]}")
    return found


def recovery_summary(kills: list[dict[str, Any]]) -> dict[str, Any]:
    times = [k["recovery_s"] for k in kills if k.get("recovery_s") is not None]
    if not times:
        return {"measured": 0}
    return {"measured": len(times), "median_s": statistics.median(times), "max_s": max(times), "min_s": min(times)}


def failed_checks(report: dict[str, Any], mode: Mode) -> list[str]:
    c = report["counts"]
    checks = {
        "events lost": c["lost"],
        "effects doubled": c["effects_doubled"],
        "aggregates with order violations": c["order_violations"],
        "unexpected output events": c["unexpected_output"],
        "gap records (gap_skipped/gap_parked)": c["gaps"],
        "DLQ records": c["dlq"],
        "aggregates whose Redis history is wrong": c["effect_histories_wrong"],
        "aggregates whose Redis state is not closed": c["domain_states_wrong"],
        "aggregates whose state record is not next=n+1 with nothing held": c["state_records_wrong"],
        "workers that exited by themselves": c["unexpected_exits"],
        "applied fail_first events whose first attempt never failed": c["fail_first_not_exercised"],
    }
    failed = [f"{what}: {n}" for what, n in checks.items() if n]
    if c["kills"] < mode.min_kills or c["zombie_episodes"] < len(mode.zombie_after):
        failed.append(f"the chaos ran short: {c['kills']} kills, {c['zombie_episodes']} zombie episodes")
    if report["drain"]["outcome"] != "complete":
        failed.append(f"the output never held every event: {report['drain']}")
    pause = report["producer"].get("longest_pause_s", 0.0)
    if failed and pause > GAP_TIMEOUT - MAX_DELAY:
        failed.append(
            f"(inconclusive: the test's producer paused {pause} s, so a late event may have followed its "
            f"successor by more than the gap timeout: gaps may be the input's)"
        )
    return failed


def samples(items: list[Any], n: int = 5) -> list[str]:
    return [repr(x)[:300] for x in items[:n]]


# --------------------------------------------------------------------------- the test


@pytest.mark.fault
@pytest.mark.chaos
@pytest.mark.timeout(MODE.timeout)
async def test_chaos_kills_and_zombies_lose_nothing_double_nothing_and_keep_order(broker, redis_url) -> None:
    began = time.monotonic()
    seed = int(os.environ.get("SEQGUARD_CHAOS_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    print(f"\nchaos {MODE.name}: seed {seed} (SEQGUARD_CHAOS_SEED={seed} replays the input and choices)")
    deployment = Deployment(broker.url, redis_url, extra=dict(ENV))
    await deployment.create_topics()
    settings = deployment.settings()
    data = make_input(MODE, rng)
    expected = {(agg, s) for agg, n in data.expected.items() for s in range(1, n + 1)}
    print(f"input: {data.stats}")

    tail = OutputTail(broker.bootstrap, settings.output_topic)
    tail.expected = len(expected)
    chaos = Chaos(deployment, tail, rng)
    try:
        await tail.start()
        await chaos.start()
        chaos.t0, chaos.t0_wall = time.monotonic(), time.time()
        producer: dict[str, float] = {}
        producing = asyncio.ensure_future(produce_paced(broker.bootstrap, settings.input_topic, data.records, producer))
        try:
            await chaos.run(MODE, producing)
        finally:
            for measuring in chaos.measuring:
                measuring.cancel()  # the chaos is over: a replacement that has not received anything yet never will
            await asyncio.gather(producing, *chaos.measuring, return_exceptions=True)
        producing.result()
        chaos_s = time.monotonic() - chaos.t0
        drained = await drain(chaos, tail, expected, MODE.drain_deadline)
        await tail.quiet(3.0, timeout=30)
        input_committed = await committed_offsets(
            broker.bootstrap, settings.app_id, settings.input_topic, settings.partitions
        )

        out = await consume_all(broker.bootstrap, settings.output_topic, expect=tail.count, timeout=120, quiet=3)
        audit = [
            json.loads(r.value) for r in await consume_all(broker.bootstrap, settings.audit_topic, quiet=2, timeout=60)
        ]
        dlq = await consume_all(broker.bootstrap, settings.dlq, quiet=2, timeout=60)
        table = (await changelog_content(broker.bootstrap, settings))[STATE_TABLE]
        effects = await check_redis(redis_url, settings.redis_prefix, data.expected)
        await chaos.reap()
    finally:
        await tail.stop()
        for worker in chaos.workers:
            worker.kill()

    output = check_output(out, data.expected)
    states_wrong = check_state_table(table, data.expected)
    gaps = [a for a in audit if a.get("kind") in GAP_KINDS]
    dlq_classes = Counter(dict(r.headers).get(ERROR_CLASS, b"?").decode() for r in dlq)
    report: dict[str, Any] = {
        "mode": MODE.name,
        "seed": seed,
        "input": data.stats,
        "producer": producer,
        "counts": {
            "lost": len(output["lost"]),
            "effects_doubled": effects["effects_doubled"],
            "order_violations": len(output["order_violations"]),
            "gaps": len(gaps),
            "dlq": len(dlq),
            "state_records_wrong": len(states_wrong),
            "effect_histories_wrong": len(effects["effect_histories_wrong"]),
            "domain_states_wrong": len(effects["domain_states_wrong"]),
            "unexpected_output": len(output["unexpected"]),
            "unexpected_exits": len(chaos.exits),
            "fail_first_not_exercised": len(applied_fail_first(out, data.fail_first) - effects["failed_first"]),
            "re_emitted": output["re_emitted"],
            "output_records": output["output_records"],
            "effects_absorbed_by_markers": effects["effects_absorbed_by_markers"],
            "kills": len(chaos.kills),
            "zombie_episodes": len(chaos.zombies),
        },
        "dlq_by_class": dict(dlq_classes),
        "audit_by_kind": dict(Counter(a.get("kind") for a in audit)),
        "recovery": recovery_summary(chaos.kills),
        "gap_times": gap_times(gaps, chaos.t0_wall),
        "kills": chaos.kills,
        "zombies": chaos.zombies,
        "exits": chaos.exits,
        "chaos_s": round(chaos_s, 1),
        "drain": drained,
        "input_records_committed": input_committed,
        "wall_s": round(time.monotonic() - began, 1),
        "samples": {
            "lost": samples(output["lost"]),
            "order_violations": samples(output["order_violations"]),
            "gaps": samples(gaps),
            "dlq": samples(
                [{k: v.decode(errors="replace")[:160] for k, v in r.headers if k.startswith("seqguard-")} for r in dlq]
            ),
            "state_records_wrong": samples(states_wrong),
            "effect_histories_wrong": samples(effects["effect_histories_wrong"]),
            "domain_states_wrong": samples(effects["domain_states_wrong"]),
            "unexpected_output": samples(output["unexpected"]),
        },
        "log_findings": log_findings(deployment),
        "logs": str(LOGS / f"{deployment.name}-*.log"),
    }
    path = LOGS / f"chaos-{MODE.name}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "counts",
                    "dlq_by_class",
                    "audit_by_kind",
                    "recovery",
                    "producer",
                    "chaos_s",
                    "drain",
                    "wall_s",
                )
            },
            indent=2,
        )
    )
    if gaps:
        print("first gaps (s since the chaos began):\n  " + "\n  ".join(report["gap_times"][:15]))
    print(f"full report: {path}")

    failed = failed_checks(report, MODE)
    assert not failed, (
        "chaos checks failed:\n  " + "\n  ".join(failed) + f"\ncounts: {report['counts']}\nreport: {path}"
    )
