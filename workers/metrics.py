"""Prometheus metrics, built on an injected registry so tests read them without global state."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: The ``type`` label of events whose type is neither handled nor named by the policy file:
#: label values come from the input, and unbounded ones would be unbounded series.
OTHER_TYPE = "other"
#: Outcomes of records that carry the DLQ replay header (seqguard_replayed_events_total).
REPLAY_OUTCOMES = ("applied", "buffered", "duplicate", "dead_lettered")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    received: Counter
    applied: Counter
    duplicates: Counter
    out_of_order: Counter
    order_violations: Counter
    gaps_skipped: Counter
    gap_events_skipped: Counter
    gaps_parked: Counter
    replayed_events: Counter
    dead_lettered: Counter
    handler_retries: Counter
    handler_seconds: Histogram
    batch_seconds: Histogram
    batch_phase_seconds: Histogram
    apply_lag_seconds: Histogram
    buffered: Gauge
    parked: Gauge
    gap_open: Gauge
    gap_oldest: Gauge
    consumer_lag: Gauge
    paused: Gauge
    dependency_up: Gauge
    outages: Counter
    outage_retries: Counter
    effects_run: Counter
    effects_skipped: Counter
    ledger_fail_open: Counter
    ledger_claims_expired: Counter
    ledger_claims_lost: Counter
    ledger_conflicts: Counter
    #: Event types that get their own label value (``prime``); the rest count as ``other``.
    types: set[str] = field(default_factory=set)

    @classmethod
    def disabled(cls) -> Metrics:
        """Metrics that count nothing (SEQGUARD_METRICS=false): what observability costs is
        measured against this (benchmarks/throughput.py); /metrics is then empty."""
        off: Any = _Off()
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("registry", "types")]
        return cls(registry=CollectorRegistry(), **dict.fromkeys(names, off))

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        r = registry if registry is not None else CollectorRegistry()
        # Built in this order so the exposition lists the metrics as it always has.
        return cls(
            registry=r,
            **_input_metrics(r),
            **_ordering_metrics(r),
            **_dead_letter_metrics(r),
            **_worker_metrics(r),
            **_lag_metrics(r),
            **_outage_metrics(r),
            **_ledger_metrics(r),
        )

    def type_label(self, event_type: str) -> str:
        return event_type if event_type in self.types else OTHER_TYPE

    def prime(self, types: Iterable[str], error_classes: Iterable[str], topics: Iterable[str] = ()) -> None:
        """Bound the ``type`` label to ``types`` and create every labelled counter at 0.

        A series that appears at its first event is invisible to ``increase()`` over that
        step: created at 0 at start-up, the first late event or duplicate after a deploy
        fires its alert like any later one.
        """
        self.types.update(types)
        labels = sorted(self.types) + [OTHER_TYPE]
        for t in labels:
            for counter in (self.applied, self.duplicates, self.out_of_order, self.gaps_skipped):
                counter.labels(t)
            for counter in (self.gap_events_skipped, self.gaps_parked, self.handler_retries):
                counter.labels(t)
            for action in ("applied", "rejected"):
                self.order_violations.labels(t, action)
            for error_class in error_classes:
                self.dead_lettered.labels(error_class, t)
        for outcome in REPLAY_OUTCOMES:
            self.replayed_events.labels(outcome)
        for topic in topics:  # the denominator of the idempotency hit rate
            self.received.labels(topic)

    def forget_partitions(self, partitions: Iterable[int], topics: Iterable[str]) -> None:
        """Remove the gauges of partitions that left this worker: their new owner exports them,
        and a stale value here would keep alerts firing from a worker that no longer owns them."""
        topics = list(topics)
        for partition in partitions:
            label = str(partition)
            for gauge in (self.buffered, self.parked, self.gap_open, self.gap_oldest):
                _remove(gauge, label)
            for topic in topics:
                _remove(self.consumer_lag, topic, label)


class _Off:
    """Stands for any metric, histogram internals included (BatchObserver), and does nothing."""

    _upper_bounds = (float("inf"),)

    def __init__(self) -> None:
        self._buckets = [self]
        self._sum = self

    def labels(self, *_: Any) -> _Off:
        return self

    def inc(self, *_: Any) -> None:
        pass

    set = observe = remove = clear = inc


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set on this worker
        metric.remove(*labels)


def _input_metrics(r: CollectorRegistry) -> dict[str, Any]:
    return {"received": Counter("seqguard_events_received", "Input records consumed", ["topic"], registry=r)}


def _ordering_metrics(r: CollectorRegistry) -> dict[str, Any]:
    """What the sequencer decided per event: applied, duplicate, buffered, late, or lost to a gap."""
    return {
        "applied": Counter("seqguard_events_applied", "Events applied by their handler", ["type"], registry=r),
        "duplicates": Counter(
            "seqguard_events_duplicate",
            "Events skipped because their ID was already applied or buffered",
            ["type"],
            registry=r,
        ),
        "out_of_order": Counter(
            "seqguard_events_out_of_order",
            "Events that arrived ahead of their aggregate's sequence and were buffered",
            ["type"],
            registry=r,
        ),
        "order_violations": Counter(
            "seqguard_order_violations",
            "Late events (behind the sequence, never seen); action is applied or rejected",
            ["type", "action"],
            registry=r,
        ),
        "gaps_skipped": Counter(
            "seqguard_gaps_skipped", "Sequence gaps given up on, by the type that waited", ["type"], registry=r
        ),
        "gap_events_skipped": Counter(
            "seqguard_gap_sequences_skipped",
            "Sequence numbers skipped by gap timeouts or operators",
            ["type"],
            registry=r,
        ),
        "gaps_parked": Counter(
            "seqguard_gaps_parked",
            "Aggregates parked on a gap (gap_policy park), by the type that waited",
            ["type"],
            registry=r,
        ),
        "replayed_events": Counter(
            "seqguard_replayed_events",
            "Records republished from the DLQ, by what the worker did with them",
            ["outcome"],
            registry=r,
        ),
    }


def _dead_letter_metrics(r: CollectorRegistry) -> dict[str, Any]:
    return {
        "dead_lettered": Counter(
            "seqguard_dead_lettered",
            "Records produced to the DLQ",
            ["error_class", "type"],
            registry=r,
        ),
    }


def _worker_metrics(r: CollectorRegistry) -> dict[str, Any]:
    """Handler and batch timings, and what each source partition holds back."""
    return {
        "handler_retries": Counter("seqguard_handler_retries", "Handler attempts retried", ["type"], registry=r),
        "handler_seconds": Histogram(
            "seqguard_handler_duration_seconds",
            "Handler run time",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        "batch_seconds": Histogram(
            "seqguard_batch_duration_seconds",
            "Time to process one batch, flush included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        "batch_phase_seconds": Histogram(
            "seqguard_batch_phase_duration_seconds",
            "One batch cycle by phase: fetch (asking for records until some came, idle time included), "
            "process (decode, decide, handlers), effects (output, DLQ, audit sent and acknowledged), "
            "state (changelog records sent and acknowledged)",
            ["phase"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        "apply_lag_seconds": Histogram(
            "seqguard_apply_lag_seconds",
            "From the record's timestamp to its apply",
            buckets=LATENCY_BUCKETS,
            registry=r,
        ),
        "buffered": Gauge(
            "seqguard_buffered_events",
            "Events held in reorder buffers, per source partition",
            ["partition"],
            registry=r,
        ),
        "parked": Gauge(
            "seqguard_parked_aggregates",
            "Aggregates parked on a dead-lettered event or a gap",
            ["partition"],
            registry=r,
        ),
        "gap_open": Gauge(
            "seqguard_gap_open_aggregates",
            "Aggregates whose buffered events wait for missing sequence numbers (not parked)",
            ["partition"],
            registry=r,
        ),
        "gap_oldest": Gauge(
            "seqguard_gap_oldest_seconds",
            "How long the oldest open gap has been waiting, on its partition's gap clock (0: none)",
            ["partition"],
            registry=r,
        ),
    }


def _lag_metrics(r: CollectorRegistry) -> dict[str, Any]:
    return {
        "consumer_lag": Gauge(
            "seqguard_consumer_lag_records",
            "Records behind the fetch high-water mark",
            ["topic", "partition"],
            registry=r,
        ),
    }


def _outage_metrics(r: CollectorRegistry) -> dict[str, Any]:
    """Pauses on an unavailable dependency (workers/processor/outage.py)."""
    return {
        "paused": Gauge("seqguard_paused", "1 while an event waits for an unavailable dependency", registry=r),
        "dependency_up": Gauge(
            "seqguard_dependency_up",
            "0 from a dependency's outage until an event went through again",
            ["dependency"],
            registry=r,
        ),
        "outages": Counter(
            "seqguard_outages", "Pauses begun because a dependency was unavailable", ["dependency"], registry=r
        ),
        "outage_retries": Counter(
            "seqguard_outage_retries", "Retries of an event waiting for a dependency", ["dependency"], registry=r
        ),
    }


def _ledger_metrics(r: CollectorRegistry) -> dict[str, Any]:
    """The effect ledger (workers/ledger/redis.py) and projections: ``effect`` is a name in code."""

    def counter(name: str, doc: str) -> Counter:
        return Counter(name, doc, ["effect"], registry=r)

    return {
        "effects_run": counter("seqguard_effects_run", "Effects run through the ledger"),
        "effects_skipped": counter("seqguard_effects_skipped", "Effects skipped: done before for the same key"),
        "ledger_fail_open": counter(
            "seqguard_ledger_fail_open", "Effects run unguarded because the ledger was unreachable (fail_open)"
        ),
        "ledger_claims_expired": counter(
            "seqguard_ledger_claims_expired", "Claims taken over after their lease ran out: the effect may run twice"
        ),
        "ledger_claims_lost": counter(
            "seqguard_ledger_claims_lost", "Effects whose claim was taken over while they ran (lease too short)"
        ),
        "ledger_conflicts": counter(
            "seqguard_ledger_conflicts", "Effect keys used again with another payload (dead-lettered)"
        ),
    }


class BatchObserver:
    """Observations of one batch, added to a Histogram at once.

    ``Histogram.observe`` takes a lock and touches three values per call: per event, that
    was 7% of a worker's CPU. This counts per bucket locally and adds each count once.
    (prometheus_client keeps one non-cumulative value per bucket, ``_buckets``, and ``_sum``.)
    """

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.bounds: list[float] = list(histogram._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def flush(self) -> None:
        for i, n in enumerate(self.counts):
            if n:
                self.histogram._buckets[i].inc(n)
                self.counts[i] = 0
        if self.total:
            self.histogram._sum.inc(self.total)
            self.total = 0.0
