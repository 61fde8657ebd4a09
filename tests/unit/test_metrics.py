"""Metrics helpers."""

from __future__ import annotations


def test_batch_observer_matches_histogram_observe() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from workers.metrics import BatchObserver

    values = [0.0005, 0.003, 0.003, 0.2, 7.0, 100.0, 0.001]
    direct = Histogram("direct", "d", buckets=(0.001, 0.01, 1, 10), registry=CollectorRegistry())
    batched = Histogram("batched", "b", buckets=(0.001, 0.01, 1, 10), registry=CollectorRegistry())
    observer = BatchObserver(batched)
    for v in values:
        direct.observe(v)
        observer.observe(v)
    observer.flush()

    def samples(h):
        return [(s.name.split("_", 1)[1], s.labels, s.value) for s in h.collect()[0].samples if "created" not in s.name]

    assert samples(direct) == samples(batched)
