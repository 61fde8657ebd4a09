"""Prometheus metrics, built on an injected registry so tests read them without global state."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    received: Counter
    applied: Counter
    duplicates: Counter
    out_of_order: Counter
    order_violations: Counter
    gaps: Counter
    gap_events_skipped: Counter
    dead_lettered: Counter
    handler_retries: Counter
    handler_seconds: Histogram
    batch_seconds: Histogram
    apply_lag_seconds: Histogram
    buffered: Gauge
    parked: Gauge
    consumer_lag: Gauge
    replayed: Counter
    startup_failures: Counter
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
            **_operator_metrics(r),
            **_outage_metrics(r),
            **_ledger_metrics(r),
        )


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
        "gaps": Counter("seqguard_gaps", "Sequence gaps given up on after their timeout", ["type"], registry=r),
        "gap_events_skipped": Counter(
            "seqguard_gap_sequences_skipped",
            "Sequence numbers skipped by gap timeouts or operators",
            ["type"],
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


def _operator_metrics(r: CollectorRegistry) -> dict[str, Any]:
    """DLQ records replayed, and failed start-up checks."""
    return {
        "replayed": Counter(
            "seqguard_dlq_replayed",
            "DLQ records republished to their input topic",
            ["error_class"],
            registry=r,
        ),
        "startup_failures": Counter("seqguard_startup_failures", "Failed start-up checks", ["check"], registry=r),
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
