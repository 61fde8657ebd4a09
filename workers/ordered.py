"""The ordered processor: decodes a batch, asks the pure core what to do, and does it.

Nothing here decides order: ``tables.sequencer`` does. This module runs handlers (with
retries and time limits), produces applied events, dead letters, repartitioned records
and audit records, and writes each changed aggregate's state once per batch. The Faust
agent acknowledges a batch only after ``process_batch`` returned, which is after every
record it produced (changelogs included) was acknowledged by the broker.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tables import sequencer as core
from tables.policy import Policy, PolicyBook
from tables.sequencer import Aggregate, Gap, Incoming, Limits, Verdict
from workers.dlq.records import Failure, Source, dlq_headers
from workers.envelope import Envelope, decode
from workers.errors import (
    BUFFER_OVERFLOW,
    DESERIALIZATION_FAILED,
    HANDLER_EXCEPTION,
    ORDER_VIOLATION,
    CriticalError,
    DecodeError,
    HandlerTimeout,
    SeqguardError,
)
from workers.handlers import Context, Registry
from workers.metrics import BatchObserver, Metrics
from workers.records import InRecord
from workers.settings import Settings
from workers.sink import Sink
from workers.state_store import Snapshot, TableStore

log = logging.getLogger(__name__)

#: Control events: produced by `seqguard aggregates resolve` into the input topic, keyed by
#: the aggregate, so the worker that owns the aggregate applies them in order with its events.
CONTROL_SOURCE = "seqguard/cli"
IDLE_SWEEP_CHUNK = 10_000  # aggregates looked at per sweep for TTL expiry
RESOLVE_TYPE = "seqguard.aggregate.resolve"


@dataclass(slots=True)
class HandlerFailure:
    error_class: str
    message: str
    attempts: int


@dataclass(slots=True)
class Loaded:
    key: bytes
    agg: Aggregate
    before: Snapshot
    partition: int
    buffer_bytes: int | None = None  # the reorder buffer's JSON size, computed when first needed


class OrderedProcessor:
    def __init__(
        self,
        settings: Settings,
        store: TableStore,
        sink: Sink,
        registry: Registry,
        effects: Any,
        metrics: Metrics,
        policies: PolicyBook,
        worker_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.sink = sink
        self.registry = registry
        self.effects = effects
        self.metrics = metrics
        self.policies = policies
        self.worker_id = worker_id
        self.clock = clock
        self.limits = Limits(settings.max_buffered_per_aggregate, settings.max_seen_ids)
        self.lock = asyncio.Lock()
        #: Per-batch counts by label, added to the Prometheus counters once per batch.
        self._counts: dict[Any, Counter[str]] = defaultdict(Counter)
        self._apply_lag = BatchObserver(metrics.apply_lag_seconds)
        self._loaded: dict[bytes, Loaded] = {}
        #: Aggregates with buffered events or parked, by key -> partition. Derived from the
        #: tables (rebuilt when the assignment changes); it only saves scanning every key.
        self._held: dict[bytes, int] = {}
        self._held_for: frozenset[int] | None = None
        self._buffered: Counter[int] = Counter()
        self._last_ttl_sweep = 0.0
        #: The TTL pass in progress: keys still to look at. A pass is spread over sweeps, a
        #: chunk each, so it never holds the processor for long whatever the key count.
        self._idle_keys: Iterator[tuple[bytes, int]] | None = None

    # ------------------------------------------------------------------ batch

    async def process_batch(self, records: Sequence[InRecord]) -> None:
        async with self.lock:
            await self.sink.start()
            started = time.perf_counter()
            received = self._counts[self.metrics.received]
            for rec in records:
                received[rec.topic] += 1
                await self._process(rec)
            self._count_batch()  # before the flush: a reader of the output never sees more than /metrics
            await self._commit_state()
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

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
            await self._dead_letter(rec, Failure(DESERIALIZATION_FAILED, str(exc)))
            return
        key = env.aggregate_id.encode()
        if rec.key != key and rec.topic == self.settings.input_topic:
            # Keyed by something else: route it through the repartition topic, keyed by
            # the aggregate, so the worker that owns the aggregate's partition gets it.
            await self.sink.send_keyed(self.settings.repartition_topic, key, rec.value, rec.timestamp_ms, rec.headers)
            return
        loaded = await self._load(key, rec.partition)
        if env.source == CONTROL_SOURCE and env.type == RESOLVE_TYPE:
            await self._resolve(loaded, env)
            return
        await self._receive(loaded, env, rec)

    async def _receive(self, loaded: Loaded, env: Envelope, rec: InRecord, *, retried: bool = False) -> None:
        agg, now = loaded.agg, self.clock()
        policy = self.policies.for_type(env.type)
        incoming = Incoming(env.sequence, env.idempotency_key, env.type)
        room = self._buffered[loaded.partition] < self.settings.max_buffered_per_partition
        verdict = core.receive(agg, incoming, policy, now, start=self.policies.start, limits=self.limits, room=room)
        m = self.metrics
        if verdict is Verdict.APPLY:
            await self._apply(loaded, env, rec, policy)
            await self._drain(loaded)
        elif verdict is Verdict.BUFFERED or verdict is Verdict.HELD:
            if not self._hold(loaded, env, rec):
                await self._overflow(loaded, env, rec, retried=retried)
                return
            self._buffered[loaded.partition] += 1
            self._counts[m.out_of_order][env.type] += 1
        elif verdict is Verdict.DUPLICATE:
            self._counts[m.duplicates][env.type] += 1
        elif verdict is Verdict.LATE:
            await self._late(loaded, env, rec, policy)
        elif verdict is Verdict.CONFLICT:
            await self._fail(
                loaded,
                env,
                rec,
                HandlerFailure(ORDER_VIOLATION, f"sequence {env.sequence} is already held by another event", 0),
            )
        elif verdict is Verdict.OVERFLOW:
            await self._overflow(loaded, env, rec, retried=retried)

    def _hold(self, loaded: Loaded, env: Envelope, rec: InRecord) -> bool:
        """Keep the input record with its buffered entry, unless the aggregate's buffer would
        outgrow one changelog record (then it is taken out again: an overflow)."""
        held = loaded.agg.buffer.get(env.sequence)  # type: ignore[arg-type]
        assert held is not None
        held.record = rec.to_json()
        if loaded.buffer_bytes is None:
            loaded.buffer_bytes = sum(_record_bytes(b.record) for b in loaded.agg.buffer.items.values())
        else:
            loaded.buffer_bytes += _record_bytes(held.record)
        if loaded.buffer_bytes > self.settings.max_state_record_bytes:
            loaded.agg.buffer.pop(held.seq)
            loaded.buffer_bytes -= _record_bytes(held.record)
            return False
        return True

    async def _late(self, loaded: Loaded, env: Envelope, rec: InRecord, policy: Policy) -> None:
        next_seq = loaded.agg.seq.next_seq
        action = "applied" if policy.ordering == "warn" else "rejected"
        self.metrics.order_violations.labels(env.type, action).inc()
        log.warning(
            "late event %s seq %s of %s (next is %s): %s", env.type, env.sequence, env.aggregate_id, next_seq, action
        )
        if policy.ordering == "warn":
            await self._apply(loaded, env, rec, policy)
        else:
            msg = f"late event: sequence {env.sequence} is behind the next expected {next_seq} and was never applied"
            await self._dead_letter(rec, self._failure(env, HandlerFailure(ORDER_VIOLATION, msg, 0)))

    async def _overflow(self, loaded: Loaded, env: Envelope, rec: InRecord, *, retried: bool = False) -> None:
        if self.settings.overflow_policy == "skip_gap" and not retried and len(loaded.agg.buffer):
            # Give up on the oldest gap now, as if its timeout had passed, then decide again.
            await self._expire_gaps(loaded, math.inf)
            await self._receive(loaded, env, rec, retried=True)
            return
        in_partition = self._buffered[loaded.partition]
        msg = f"reorder buffer full ({len(loaded.agg.buffer)} held for this aggregate, {in_partition} in its partition)"
        await self._dead_letter(rec, self._failure(env, HandlerFailure(BUFFER_OVERFLOW, msg, 0)))

    # ------------------------------------------------------------------ apply

    async def _apply(self, loaded: Loaded, env: Envelope, rec: InRecord, policy: Policy) -> None:
        failure = await self._run_handler(env)
        incoming = Incoming(env.sequence, env.idempotency_key, env.type)
        if failure is not None:
            await self._fail(loaded, env, rec, failure, policy)
            return
        now = self.clock()
        core.applied(loaded.agg, incoming, now, limits=self.limits)
        self._counts[self.metrics.applied][env.type] += 1
        if rec.timestamp:
            self._apply_lag.observe(max(0.0, now - rec.timestamp))
        self.sink.add(
            self.settings.output_topic,
            loaded.partition,
            env.aggregate_id.encode(),
            rec.value,
            rec.timestamp_ms,
            rec.headers,
        )

    async def _drain(self, loaded: Loaded) -> None:
        """Apply buffered events that are now in order."""
        loaded.buffer_bytes = None  # recomputed when next needed
        while (entry := core.pop_ready(loaded.agg)) is not None:
            self._buffered[loaded.partition] -= 1
            rec = InRecord.from_json(entry.record)
            try:
                env = self._decode(rec)
            except DecodeError as exc:  # it decoded when it was buffered; never expected
                await self._dead_letter(rec, Failure(DESERIALIZATION_FAILED, str(exc)))
                continue
            await self._apply(loaded, env, rec, self.policies.for_type(env.type))

    async def _fail(
        self, loaded: Loaded, env: Envelope, rec: InRecord, failure: HandlerFailure, policy: Policy | None = None
    ) -> None:
        await self._dead_letter(rec, self._failure(env, failure))
        policy = policy or self.policies.for_type(env.type)
        incoming = Incoming(env.sequence, env.idempotency_key, env.type)
        if failure.error_class != ORDER_VIOLATION and core.failed(
            loaded.agg, incoming, policy, failure.error_class, self.clock()
        ):
            log.warning("aggregate %s parked at sequence %s: %s", env.aggregate_id, env.sequence, failure.error_class)

    async def _run_handler(self, env: Envelope) -> HandlerFailure | None:
        spec = self.registry.get(env.type)
        if spec is None:
            return None  # no handler: seqguard only orders and deduplicates this type
        try:
            data = spec.prepare(env)
        except SeqguardError as exc:
            return HandlerFailure(exc.error_class, str(exc), 0)
        settings = self.settings
        timeout = spec.timeout or settings.handler_timeout
        attempts = settings.handler_attempts
        error: BaseException | None = None
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    await spec.fn(env, data, Context(self.effects, attempt))
            except SeqguardError as exc:
                if exc.permanent:
                    return HandlerFailure(exc.error_class, f"{type(exc).__name__}: {exc}", attempt)
                error = exc
            except TimeoutError:
                error = HandlerTimeout(f"handler for {env.type} ran past {timeout} s")
            except Exception as exc:  # noqa: BLE001 - a handler's bug is dead-lettered, never escapes
                error = exc
            else:
                self.metrics.handler_seconds.labels(env.type).observe(time.perf_counter() - started)
                return None
            if attempt < attempts:
                self.metrics.handler_retries.labels(env.type).inc()
                await asyncio.sleep(min(settings.retry_max_delay, settings.retry_base_delay * 2 ** (attempt - 1)))
        error_class = error.error_class if isinstance(error, SeqguardError) else HANDLER_EXCEPTION
        return HandlerFailure(error_class, f"{type(error).__name__}: {error}", attempts)

    # ------------------------------------------------------------------ gaps, operators

    async def _expire_gaps(self, loaded: Loaded, now: float) -> bool:
        changed = False
        policy_of = self.policies.for_type
        while (result := core.expire_gap(loaded.agg, policy_of, now)) is not None:
            changed = True
            lowest = loaded.agg.buffer.lowest()
            event_type = lowest.type if lowest else ""
            key = loaded.key
            if isinstance(result, Gap):
                self.metrics.gaps.labels(event_type).inc()
                self.metrics.gap_events_skipped.labels(event_type).inc(result.size)
                await self._audit("gap_skipped", key, first=result.first, last=result.last, type=event_type)
                await self._drain(loaded)
            else:
                await self._audit("gap_parked", key, seq=result.seq, type=event_type)
                break
        return changed

    async def _resolve(self, loaded: Loaded, env: Envelope) -> None:
        data = env.data if isinstance(env.data, dict) else {}
        skip_to = int(data.get("skip_to", 0))
        key = loaded.key
        if skip_to < 1:
            await self._audit("resolve_refused", key, reason="skip_to must be >= 1", request=data)
            return
        before = loaded.agg.seq.next_seq
        gap, dropped = core.resolve(loaded.agg, skip_to, self.clock())
        self._buffered[loaded.partition] -= len(dropped)
        await self._audit(
            "resolved",
            key,
            skip_to=skip_to,
            was_next=before,
            skipped=None if gap is None else [gap.first, gap.last],
            dropped=[b.seq for b in dropped],
            reason=data.get("reason", ""),
            operator=data.get("operator", ""),
        )
        for entry in dropped:
            await self._dead_letter(
                InRecord.from_json(entry.record),
                Failure(
                    ORDER_VIOLATION,
                    f"dropped by operator resolve --skip-to {skip_to}",
                    0,
                    key.decode(),
                    entry.seq,
                    entry.type,
                ),
            )
        await self._drain(loaded)

    # ------------------------------------------------------------------ sweep

    async def sweep(self, active: set[int]) -> None:
        """Gap timeouts, TTL expiry and gauges for the aggregates this worker owns."""
        async with self.lock:
            await self.sink.start()
            now = self.clock()
            if self._held_for != frozenset(active):
                self._rebuild_index(active)
            for key, partition in list(self._held.items()):
                loaded = await self._load(key, partition)
                await self._expire_gaps(loaded, now)
            if self._idle_keys is None and now - self._last_ttl_sweep > min(60.0, self.settings.state_ttl / 10):
                self._last_ttl_sweep = now
                self._idle_keys = iter(list(self.store.keys(active)))
            if self._idle_keys is not None:
                self._expire_idle(active, now)
            self._count_batch()  # events a gap skip released count too
            await self._commit_state()
            self._update_gauges(active)

    def _rebuild_index(self, active: set[int]) -> None:
        self._held.clear()
        self._buffered.clear()
        for key, partition in self.store.keys(active):
            agg, _ = self.store.load(key)
            if len(agg.buffer) or agg.seq.parked is not None:
                self._held[key] = partition
                self._buffered[partition] += sum(1 for b in agg.buffer.items.values() if not b.done)
        self._held_for = frozenset(active)

    def _expire_idle(self, active: set[int], now: float) -> None:
        """Look at the next chunk of the TTL pass: prune old seen IDs, forget idle aggregates."""
        assert self._idle_keys is not None
        ttl = self.settings.state_ttl
        chunk = list(itertools.islice(self._idle_keys, IDLE_SWEEP_CHUNK))
        if len(chunk) < IDLE_SWEEP_CHUNK:
            self._idle_keys = None  # the pass is complete
        for key, partition in chunk:
            if partition not in active or key in self._loaded:
                continue  # moved away since the pass began, or being written this sweep
            agg, before = self.store.load(key)
            agg.seen.prune(now, ttl)
            if core.is_idle(agg, now, ttl):
                self.store.save(key, agg, partition, before, forget=True)
            else:
                self.store.save(key, agg, partition, before)

    def _update_gauges(self, active: set[int]) -> None:
        parked: Counter[int] = Counter()
        for key, partition in self._held.items():
            agg, _ = self.store.load(key)
            if agg.seq.parked is not None:
                parked[partition] += 1
        for partition in active:
            self.metrics.parked.labels(str(partition)).set(parked[partition])
            self.metrics.buffered.labels(str(partition)).set(max(0, self._buffered[partition]))

    # ------------------------------------------------------------------ I/O helpers

    async def _load(self, key: bytes, partition: int) -> Loaded:
        loaded = self._loaded.get(key)
        if loaded is None:
            agg, before = self.store.load(key)
            loaded = self._loaded[key] = Loaded(key, agg, before, partition)
        return loaded

    async def _commit_state(self) -> None:
        """Write every changed aggregate, then wait for every record of the batch to be acknowledged."""
        for key, loaded in self._loaded.items():
            self.store.save(key, loaded.agg, loaded.partition, loaded.before)
            if len(loaded.agg.buffer) or loaded.agg.seq.parked is not None:
                self._held[key] = loaded.partition
            else:
                self._held.pop(key, None)
        self._loaded.clear()
        try:
            await self.sink.flush()  # output, DLQ, audit, repartition and changelogs
        except Exception as exc:
            raise CriticalError(f"a produce failed; the batch is not acknowledged: {exc!r}") from exc

    def _count_batch(self) -> None:
        self._apply_lag.flush()
        for metric, counts in self._counts.items():
            for label, n in counts.items():
                metric.labels(label).inc(n)
        self._counts.clear()

    def _failure(self, env: Envelope, failure: HandlerFailure) -> Failure:
        return Failure(
            failure.error_class, failure.message, failure.attempts, env.aggregate_id, env.sequence, env.type, env.id
        )

    async def _dead_letter(self, rec: InRecord, failure: Failure) -> None:
        source = Source(
            rec.topic,
            rec.partition,
            rec.offset,
            rec.timestamp_ms,
            rec.key,
            rec.value,
            rec.headers,
        )
        headers = dlq_headers(source, failure, worker_id=self.worker_id, max_message=self.settings.error_message_max)
        self.metrics.dead_lettered.labels(failure.error_class, failure.event_type or "unknown").inc()
        log.warning(
            "dead-lettered %s:%s@%s as %s: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            failure.error_class,
            failure.message[:200],
        )
        await self.sink.send_keyed(self.settings.dlq, rec.key, rec.value, rec.timestamp_ms, headers)

    async def _audit(self, kind: str, key: bytes, **fields: Any) -> None:
        body = {
            "kind": kind,
            "aggregate": key.decode("utf-8", "replace"),
            "at": self.clock(),
            "worker": self.worker_id,
            **fields,
        }
        self.sink.add(self.settings.audit_topic, 0, key, json.dumps(body).encode(), None, ())


def _record_bytes(record: Any) -> int:
    """About the JSON size of a buffered record (value, key, headers and framing)."""
    if record is None:
        return 16
    _, _, _, _, key, value, headers = record
    return 96 + len(value or "") + len(key or "") + sum(len(k) + len(v or "") + 8 for k, v in headers)
