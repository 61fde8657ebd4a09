"""Metrics helpers."""

from __future__ import annotations

from prometheus_client import generate_latest

from workers.metrics import OTHER_TYPE, Metrics


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


def test_types_outside_the_registry_and_policy_file_count_as_other() -> None:
    m = Metrics.create()
    m.prime(["order.paid"], ["handler_exception"])
    assert m.type_label("order.paid") == "order.paid"
    assert m.type_label("<script>" * 50) == OTHER_TYPE
    assert m.type_label("") == OTHER_TYPE


def test_prime_creates_every_labelled_counter_at_zero() -> None:
    m = Metrics.create()
    m.prime(["order.paid"], ["handler_exception", "order_violation"])
    text = generate_latest(m.registry).decode()
    for line in (
        'seqguard_events_duplicate_total{type="order.paid"} 0.0',
        'seqguard_events_duplicate_total{type="other"} 0.0',
        'seqguard_order_violations_total{action="rejected",type="order.paid"} 0.0',
        'seqguard_gaps_parked_total{type="other"} 0.0',
        'seqguard_dead_lettered_total{error_class="order_violation",type="order.paid"} 0.0',
        'seqguard_replayed_events_total{outcome="applied"} 0.0',
    ):
        assert line in text


def test_forgotten_partitions_are_no_longer_exported() -> None:
    m = Metrics.create()
    for partition in ("0", "1"):
        m.parked.labels(partition).set(1)
        m.gap_open.labels(partition).set(2)
        m.consumer_lag.labels("in", partition).set(5)
    m.forget_partitions([1, 7], ["in", "in-repartition"])  # 7 was never set: no error
    text = generate_latest(m.registry).decode()
    assert 'seqguard_parked_aggregates{partition="0"} 1.0' in text
    assert 'partition="1"' not in text


def test_disabled_metrics_count_nothing_and_take_every_call() -> None:
    from workers.metrics import BatchObserver

    m = Metrics.disabled()
    m.prime(["order.paid"], ["handler_exception"])
    m.received.labels("in").inc(3)
    m.parked.labels("0").set(1)
    m.batch_seconds.observe(0.1)
    observer = BatchObserver(m.apply_lag_seconds)
    observer.observe(0.2)
    observer.flush()
    m.forget_partitions([0], ["in"])
    assert generate_latest(m.registry) == b""
