"""The ordered processor: decodes a batch, asks the pure core what to do, and does it.

Nothing here decides: ``tables.sequencer`` and ``tables.timers`` return a Decision (or a
Gap, Parked, Resolved...) and this module carries it out: it runs handlers, produces
applied events, dead letters and audit records, and writes each changed aggregate's one
state record per batch. The delivery acknowledges a batch's offsets only after
``process_batch`` returned, which is after every record it produced was acknowledged.

Each batch carries a fence (workers/kafka/fence.py): asked before every handler and
before the flush, it stops a batch whose partitions moved or whose membership lease ran
out; such a batch is undone (``abort``) and read again. Each source partition has a gap
clock (tables.clock): record timestamps while it lags, wall time while it is read to its end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tables import sequencer as core
from tables.clock import PartitionClock
from tables.policy import Policy, PolicyBook
from tables.sequence import Parked
from tables.sequencer import Action, Decision, Incoming, Limits, Verdict
from tables.timers import Gap, gap_record
from workers import logs
from workers.context import Resources
from workers.dependencies import Dependencies
from workers.dlq.records import REPLAYED_FROM, Failure, header
from workers.envelope import Envelope, decode
from workers.errors import (
    BUFFER_OVERFLOW,
    DESERIALIZATION_FAILED,
    FORGED_CONTROL,
    ORDER_VIOLATION,
    PROCESSING_FAILED,
    CriticalError,
    DecodeError,
)
from workers.handlers import Registry
from workers.kafka.sink import FenceCheck, Fenced, Sink
from workers.metrics import BatchObserver, Metrics
from workers.processor.emit import Emitter
from workers.processor.resolve import resolve
from workers.processor.runner import HandlerRunner
from workers.processor.store import Loaded, StateStore
from workers.records import InRecord
from workers.settings import Settings

log = logging.getLogger(__name__)

#: Control events: produced by `seqguard aggregates resolve` into the control topic
#: (Settings.control_topic, writable by operators only), keyed by the aggregate. The control
#: topic is co-partitioned with the input, so the worker that owns the aggregate applies them.
#: The source and the ``seqguard.`` type prefix are reserved: an input or repartition record
#: that claims either is dead-lettered as forged_control, never obeyed.
CONTROL_SOURCE = "seqguard/cli"
CONTROL_TYPE_PREFIX = "seqguard."
RESOLVE_TYPE = "seqguard.aggregate.resolve"
#: Decoded envelopes of buffered events kept in memory, so a release does not decode again.
ENVELOPE_CACHE = 100_000
_DEAD_LETTER_CLASS = {
    Verdict.LATE: ORDER_VIOLATION,
    Verdict.CONFLICT: ORDER_VIOLATION,
    Verdict.OVERFLOW: BUFFER_OVERFLOW,
}


class OrderedProcessor:
    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        sink: Sink,
        registry: Registry,
        resources: Resources | None,
        metrics: Metrics,
        policies: PolicyBook,
        worker_id: str,
        clock: Callable[[], float] = time.time,
        dependencies: Dependencies | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        self.metrics = metrics
        self.policies = policies
        self.clock = clock
        self.limits = Limits(
            settings.max_buffered_per_aggregate,
            settings.max_seen_ids,
            settings.max_state_record_bytes,
            settings.overflow_policy,
            policies.start,
        )
        self.runner = HandlerRunner(settings, registry, resources, metrics, dependencies)
        self.emit = Emitter(settings, sink, metrics, worker_id, clock)
        self.lock = asyncio.Lock()
        #: Per-batch counts by label, added to the Prometheus counters once per batch.
        self._counts: dict[Any, Counter[str]] = defaultdict(Counter)
        self._apply_lag = BatchObserver(metrics.apply_lag_seconds)
        self._loaded: dict[bytes, Loaded] = {}
        self._held_now: Counter[int] = Counter()  # events buffered by this batch, per partition
        self._envelopes: dict[tuple[str, int, int], Envelope] = {}
        #: Gap clocks by source partition, reset on every rebalance (app.py).
        self.clocks: dict[int, PartitionClock] = {}
        self._clock_topics = frozenset({settings.input_topic, settings.repartition_topic})
        self.fence: FenceCheck | None = None
        #: Set when the worker shuts down: an event waiting for a dependency gives up its batch.
        self.stopping = False
        #: The gap-clock time of what is being done: the current record's (tables.clock), or the
        #: sweep's clock when a gap timed out. Waits that go on after progress restart there.
        self.at = 0.0

    # ------------------------------------------------------------------ batch

    async def process_batch(self, records: Sequence[InRecord], fence: FenceCheck | None = None) -> bool:
        """Process and write the batch; False if the fence closed on it (nothing written)."""
        started = time.perf_counter()
        processed = started

        async def work() -> None:
            nonlocal processed
            await self._process_all(records)
            self.count_batch()  # before the flush: a reader of the output never sees more than /metrics
            processed = time.perf_counter()

        if not await self.run_fenced(work, fence):
            return False
        m, sink = self.metrics, self.sink
        m.batch_seconds.observe(time.perf_counter() - started)
        m.batch_phase_seconds.labels("process").observe(processed - started)
        m.batch_phase_seconds.labels("effects").observe(sink.effects_seconds)
        m.batch_phase_seconds.labels("state").observe(sink.state_seconds)
        return True

    async def run_fenced(self, work: Callable[[], Awaitable[None]], fence: FenceCheck | None) -> bool:
        """Under the lock, between batches: do ``work``, then write what it changed, behind
        ``fence`` (asked before every handler and before the flush). False if the fence closed:
        nothing was written, and memory is back to what the changelog holds."""
        async with self.lock:
            await self.sink.start()
            self.fence = fence
            try:
                await work()
                await self.commit()
            except Fenced as exc:
                self.abort(exc)
                return False
            finally:
                self.fence = None
            return True

    async def _process_all(self, records: Sequence[InRecord]) -> None:
        self._counts[self.metrics.received].update(rec.topic for rec in records)
        wall = self.clock()
        for rec in records:
            if rec.topic in self._clock_topics:
                self.at = self.gap_clock(rec.partition).observe(rec.topic, rec.timestamp, wall)
            try:
                await self._process(rec)
            except (Fenced, CriticalError):
                raise
            except Exception as exc:  # noqa: BLE001 - one record must not stop the worker at every restart
                await self._set_aside(rec, exc)

    async def _set_aside(self, rec: InRecord, exc: Exception) -> None:
        """Dead-letter a record whose processing raised (a bug met by unusual input)."""
        log.error("record %s:%s@%s could not be processed", rec.topic, rec.partition, rec.offset, exc_info=exc)
        failure = Failure(PROCESSING_FAILED, f"{type(exc).__name__}: {exc}")
        try:
            await self.emit.dead_letter(rec, failure)
        except Exception:  # noqa: BLE001 - its headers may be what failed: keep key and value
            await self.emit.dead_letter(
                InRecord(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value), failure
            )

    def gap_clock(self, partition: int) -> PartitionClock:
        if (clock := self.clocks.get(partition)) is None:
            clock = self.clocks[partition] = PartitionClock()
        return clock

    def check_fence(self) -> None:
        why = None if self.fence is None else self.fence()
        if why is not None:
            raise Fenced(why)

    def _check_waiting(self) -> None:
        """Asked between the retries of an event that waits for a dependency."""
        if self.stopping:
            raise Fenced("the worker is shutting down")
        self.check_fence()

    def _decode(self, rec: InRecord) -> Envelope:
        s = self.settings
        return decode(
            rec.key,
            rec.value,
            rec.headers,
            max_sequence=s.max_sequence,
            max_bytes=s.max_event_bytes,
            derive_ids=s.derive_missing_ids,
        )

    async def _process(self, rec: InRecord) -> None:
        try:
            env = self._decode(rec)
        except DecodeError as exc:
            await self.emit.dead_letter(rec, Failure(DESERIALIZATION_FAILED, str(exc)))
            return
        key = env.aggregate_id.encode()
        if rec.topic == self.settings.control_topic:
            # Operators only (Kafka ACLs). Never repartitioned: a command keyed by anything but
            # its aggregate may sit on another worker's partition.
            if env.source == CONTROL_SOURCE and env.type == RESOLVE_TYPE and rec.key == key:
                await resolve(self, self.load(key, rec.partition), env, rec)
                return
            forged = "not a resolve of seqguard/cli keyed by its aggregate"
        elif env.source == CONTROL_SOURCE or env.type.startswith(CONTROL_TYPE_PREFIX):
            forged = f"{env.source} {env.type} claims to be an operator command on {rec.topic}, not the control topic"
        else:
            forged = ""
        if forged:
            await self.emit.dead_letter(rec, self._failure(env, FORGED_CONTROL, forged, 0))
            return
        if rec.key != key and rec.topic == self.settings.input_topic:
            # Keyed by something else: route it through the repartition topic, keyed by
            # the aggregate, so the worker that owns the aggregate's partition gets it.
            await self.sink.send_keyed(self.settings.repartition_topic, key, rec.value, rec.timestamp_ms, rec.headers)
            return
        await self._receive(self.load(key, rec.partition), env, rec)

    async def _receive(self, loaded: Loaded, env: Envelope, rec: InRecord) -> None:
        policy = self.policies.for_type(env.type)
        incoming = Incoming(env.sequence, env.idempotency_key, env.type, rec.raw(), self.at)
        partition = loaded.partition
        room = self.store.waiting[partition] + self._held_now[partition] < self.settings.max_buffered_per_partition
        decision = core.decide(loaded.agg, incoming, policy, self.clock(), self.limits, room=room)
        await self._carry_out(loaded, env, rec, decision, policy, incoming)

    async def _carry_out(
        self, loaded: Loaded, env: Envelope, rec: InRecord, d: Decision, policy: Policy, incoming: Incoming
    ) -> None:
        m, action = self.metrics, d.action
        replayed = header(rec.headers, REPLAYED_FROM)
        if replayed is not None or d.verdict is not Verdict.APPLY:  # logged before what follows from it
            logs.decided(d, rec, env, loaded.agg.seq.next_seq, replayed)
        if d.verdict is Verdict.LATE:
            m.order_violations.labels(m.type_label(env.type), "applied" if action is Action.RUN else "rejected").inc()
        outcome = None
        if action is Action.RUN:
            if self.runner.handles(env.type):
                applied = await self._apply(loaded, env, rec, policy, incoming)
            else:  # nothing to run: no coroutine, no fence (it is asked again before the write)
                applied = self._applied(loaded, env, rec, incoming)
            outcome = "applied" if applied else "dead_lettered"
            if applied and loaded.agg.buffer:
                await self.drain(loaded)
        elif action is Action.HOLD:
            outcome = self._held(loaded, env, rec)
        elif action is Action.SKIP:
            outcome = "duplicate"
            self._counts[m.duplicates][env.type] += 1
        elif action is Action.DEAD_LETTER:
            outcome = "dead_lettered"
            await self.emit.dead_letter(rec, self._failure(env, _DEAD_LETTER_CLASS[d.verdict], d.reason, 0))
        else:  # DRAIN_AND_RETRY: the oldest gap was given up on to make room
            assert d.gap is not None
            await self.record_gap(loaded, d.gap, cause="buffer_full")
            await self._receive(loaded, env, rec)  # ends: every skip releases a buffered event
        if outcome is not None and replayed is not None:
            self._counts[m.replayed_events][outcome] += 1

    def _held(self, loaded: Loaded, env: Envelope, rec: InRecord) -> str:
        self._held_now[loaded.partition] += 1
        self._counts[self.metrics.out_of_order][env.type] += 1
        if len(self._envelopes) >= ENVELOPE_CACHE:
            self._envelopes.clear()  # entries of events dropped or moved away: a miss only costs a decode
        self._envelopes[(rec.topic, rec.partition, rec.offset)] = env
        return "buffered"

    # ------------------------------------------------------------------ apply

    async def _apply(self, loaded: Loaded, env: Envelope, rec: InRecord, policy: Policy, incoming: Incoming) -> bool:
        """Run the handler and record the outcome; True if it was applied."""
        self.check_fence()  # a worker frozen past its lease runs no more handlers for the batch
        failure = await self.runner.run(env, headers=rec.headers, check=self._check_waiting)
        if failure is None:
            return self._applied(loaded, env, rec, incoming)
        await self.emit.dead_letter(rec, self._failure(env, failure.error_class, failure.message, failure.attempts))
        if core.failed(loaded.agg, incoming, policy, failure.error_class, self.clock()):
            logs.decision("parked", rec, env, reason=failure.error_class)
        else:
            await self.drain(loaded)  # the sequence stepped over it: release what waits
        return False

    def _applied(self, loaded: Loaded, env: Envelope, rec: InRecord, incoming: Incoming) -> bool:
        """The event's handler succeeded (or it has none): record it and write its output."""
        incoming.at = self.at  # its wait on the gap clock ends now (a released event's began earlier)
        now = self.clock()
        core.applied(loaded.agg, incoming, now, limits=self.limits)
        self._counts[self.metrics.applied][env.type] += 1
        if rec.timestamp:
            self._apply_lag.observe(max(0.0, now - rec.timestamp))
        self.emit.output(rec, loaded.key, loaded.partition)
        return True

    async def drain(self, loaded: Loaded) -> None:
        """Apply buffered events that are now in order."""
        while (entry := core.pop_ready(loaded.agg)) is not None:
            assert entry.record is not None  # only ``done`` placeholders have none, and they are never popped
            rec = InRecord(*entry.record)
            env = self._envelopes.pop((rec.topic, rec.partition, rec.offset), None)
            if env is None:
                try:
                    env = self._decode(rec)  # buffered before a restart or a rebalance
                except DecodeError as exc:  # it decoded when it was buffered; never expected
                    await self.emit.dead_letter(rec, Failure(DESERIALIZATION_FAILED, str(exc)))
                    continue
            logs.decision("released", rec, env)
            incoming = Incoming(env.sequence, env.idempotency_key, env.type, at=self.at)
            if self.runner.handles(env.type):
                await self._apply(loaded, env, rec, self.policies.for_type(env.type), incoming)
            else:
                self._applied(loaded, env, rec, incoming)

    # ------------------------------------------------------------------ gaps, operators

    async def record_gap(self, loaded: Loaded, result: Gap | Parked, cause: str = "gap_timeout") -> None:
        """Count and audit a gap the core gave up on (then drain) or parked on."""
        kind, fields = gap_record(loaded.agg, result)
        m = self.metrics
        event_type = m.type_label(fields["type"])
        if isinstance(result, Gap):
            m.gaps_skipped.labels(event_type).inc()
            m.gap_events_skipped.labels(event_type).inc(result.size)
        else:
            m.gaps_parked.labels(event_type).inc()
        self.emit.audit(kind, loaded.key, **fields)
        logs.gap(loaded.key, loaded.partition, result, fields["type"], cause=cause)
        if isinstance(result, Gap):
            await self.drain(loaded)

    # ------------------------------------------------------------------ state

    def load(self, key: bytes, partition: int) -> Loaded:
        if (loaded := self._loaded.get(key)) is None:
            loaded = self._loaded[key] = self.store.load(key, partition)
        return loaded

    def is_loaded(self, key: bytes) -> bool:
        return key in self._loaded

    async def commit(self) -> None:
        """Write every changed aggregate, then wait for every record of the batch to be acknowledged.

        Raises Fenced (nothing or only effects sent, memory not yet settled: ``abort``)."""
        for loaded in self._loaded.values():
            self.store.save(loaded)
        self._loaded.clear()
        self._held_now.clear()
        try:
            await self.sink.flush(self.fence)  # output, DLQ, audit and repartition first; state last
        except Fenced:
            raise
        except Exception as exc:
            raise CriticalError(f"a produce failed; the batch is not acknowledged: {exc!r}") from exc
        self.store.settle()

    def abort(self, why: Fenced) -> None:
        """Undo a batch or sweep the fence closed on: memory goes back to what the changelog holds."""
        log.warning("batch dropped before it wrote (%s); its records are read again", why)
        self.store.rollback()
        self.sink.discard()
        self._loaded.clear()
        self._held_now.clear()
        self._counts.clear()
        self.clocks.clear()  # they saw the dropped records' timestamps: start again unknown

    def count_batch(self) -> None:
        self._apply_lag.flush()
        untyped, type_label = (self.metrics.received, self.metrics.replayed_events), self.metrics.type_label
        for metric, counts in self._counts.items():
            for label, n in counts.items():
                metric.labels(label if metric in untyped else type_label(label)).inc(n)
        self._counts.clear()

    def _failure(self, env: Envelope, error_class: str, message: str, attempts: int) -> Failure:
        return Failure(error_class, message, attempts, env.aggregate_id, env.sequence, env.type, env.id)
