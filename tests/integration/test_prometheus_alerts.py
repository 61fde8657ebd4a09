"""The alert rules and the dashboard against a real Prometheus scraping real workers.

One scenario for the module (CI time): Prometheus (tests/prometheus_server.py, the repo's
alerts.yml with short `for:`) scrapes two workers and the DLQ agent. The workers get late
never-seen events, duplicates, a gap that stays open, a gap that is skipped, and a gap on a
strict type on every partition (each parks its aggregate). The tests find the alerts
firing through /api/v1/alerts, then add a third worker and check that AggregatesParked
follows the partitions to their new owners: no alert from a worker that lost one. Last,
every query of the Grafana dashboard runs against this Prometheus, and the panels the
scenario drives show data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.harness import LOGS, ROOT, Deployment, Worker, event, metric_value, produce, run_cli, wait_until
from tests.prometheus_server import PrometheusServer
from workers.kafka.embedded import free_port

#: Faust's assignor is sticky: a worker keeps its partitions while it holds no more than
#: ceil(partitions / workers). With 3, two workers hold 2 + 1 and a third lowers that to 1,
#: so one partition must move (with 4, 2 + 2 stays put and the third worker gets nothing).
PARTITIONS = 3
WORKERS, AGENT = "seqguard-worker", "seqguard-dlq-agent"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "seqguard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
POLICIES = """
[types."ledger.entry"]      # money: a gap parks the aggregate for an operator
ordering = "strict"
gap_timeout = 1

[types."stock.moved"]       # a gap is skipped (recorded) after 1 s
ordering = "ordered"
gap_timeout = 1
gap_policy = "skip"

[types."account.updated"]   # a gap may stay open for 10 minutes
ordering = "ordered"
gap_timeout = 600
"""
#: Lowered in the test copy of the rules (the way an operator tunes it), so that the open
#: gap of the scenario fires EventSequenceGap within seconds rather than after 5 minutes.
THRESHOLDS = {"gap_open_seconds": 5}
ACCOUNTS, PER_ACCOUNT, DUPLICATES, LATE = 20, 5, 30, 3
#: Gauges per source partition, exported by the partition's owner only.
PARTITION_GAUGES = (
    "seqguard_parked_aggregates",
    "seqguard_buffered_events",
    "seqguard_gap_open_aggregates",
    "seqguard_gap_oldest_seconds",
)


def key_on(partition: int, prefix: str) -> str:
    """An aggregate ID that the producer's default partitioner puts on ``partition``."""
    partitioner, every = DefaultPartitioner(), list(range(PARTITIONS))
    return next(
        f"{prefix}-{i}" for i in range(1000) if partitioner(f"{prefix}-{i}".encode(), every, every) == partition
    )


def instance(worker: Worker) -> str:
    return f"127.0.0.1:{worker.port}"


def exported_partitions(worker: Worker) -> set[int]:
    """Partitions whose parked gauge the worker exports: those it owns (it removes the rest)."""
    return {int(p) for p in re.findall(r'^seqguard_parked_aggregates\{partition="(\d+)"\}', worker.metrics(), re.M)}


def total(workers: list[Worker], name: str, **labels: str) -> float:
    return sum(metric_value(w.metrics(), name, **labels) for w in workers if w.alive)


@dataclass
class Scene:
    prom: PrometheusServer
    deployment: Deployment
    bootstrap: str
    workers: list[Worker]
    parked_keys: dict[int, str]  # partition -> its parked ledger aggregate
    open_gap_key: str
    agent_url: str

    def worker_targets(self) -> list[str]:
        return [instance(w) for w in self.workers]


@pytest.fixture(scope="module")
async def scene(broker: Any, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scene]:
    work = tmp_path_factory.mktemp("prometheus-alerts")
    (work / "policies.toml").write_text(POLICIES)
    deployment = Deployment(
        broker.url,
        redis_url,
        extra={"SEQGUARD_POLICY_FILE": str(work / "policies.toml"), "SEQGUARD_PARTITIONS": str(PARTITIONS)},
    )
    await deployment.create_topics()
    prom = PrometheusServer(work / "prometheus", {WORKERS: [], AGENT: []}, thresholds=THRESHOLDS)
    workers: list[Worker] = []
    agent: subprocess.Popen[bytes] | None = None
    try:
        workers += [Worker(deployment, "w1"), Worker(deployment, "w2")]
        for w in workers:
            Worker.started.remove(w)  # they outlive one test function: this fixture stops them
        agent_port = free_port()
        agent = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "dlq", "agent"],
            env={**os.environ, **deployment.env(SEQGUARD_WEB_PORT=str(agent_port), SEQGUARD_DLQ_AGENT_INTERVAL="1")},
            cwd=ROOT,
            stdout=(LOGS / f"{deployment.name}-dlq-agent-{agent_port}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        prom.set_targets(WORKERS, [instance(w) for w in workers])
        prom.set_targets(AGENT, [f"127.0.0.1:{agent_port}"])
        for w in workers:
            await w.ready(timeout=90)
        for target in [instance(w) for w in workers]:
            await prom.wait_up(WORKERS, target)
        await prom.wait_up(AGENT, f"127.0.0.1:{agent_port}", timeout=60)
        parked_keys = {p: key_on(p, "ledger") for p in range(PARTITIONS)}
        agent_url = f"http://127.0.0.1:{agent_port}"
        scene = Scene(prom, deployment, broker.bootstrap, workers, parked_keys, "acct-gap", agent_url)
        await play(scene)
        yield scene
    finally:
        for w in workers:
            w.stop()
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait(10)
        prom.stop()


async def play(scene: Scene) -> None:
    """Send the scenario's events, each phase after the one it depends on was applied."""
    settings, bootstrap, workers = scene.deployment.settings(), scene.bootstrap, scene.workers
    accounts = [event(f"acct-{a}", s, "account.updated") for a in range(ACCOUNTS) for s in range(1, PER_ACCOUNT + 1)]
    gaps = (
        [event(key, s, "ledger.entry") for key in scene.parked_keys.values() for s in (1, 3)]  # 2 never comes
        + [event(scene.open_gap_key, s, "account.updated") for s in (1, 3)]
        + [event("stock-1", s, "stock.moved") for s in (1, 3, 4)]
    )
    await produce(bootstrap, settings.input_topic, accounts + gaps)
    applied = ACCOUNTS * PER_ACCOUNT + PARTITIONS + 1 + 1  # stock-1 applies 1 now, 3 and 4 after its skip
    await wait_until(
        lambda: total(workers, "seqguard_events_applied_total") >= applied,
        timeout=60,
        what=f"{applied} events applied",
    )
    await wait_until(
        lambda: total(workers, "seqguard_gaps_skipped_total", type="stock.moved") >= 1,
        timeout=30,
        what="stock-1's gap skipped",
    )
    # Redelivered events (same source and id) and late never-seen ones: stock-1's 2 after its
    # gap was skipped, and new events behind the sequence of applied accounts.
    late = [event("stock-1", 2, "stock.moved")] + [
        event(f"acct-{a}", 2, "account.updated", id=f"acct-{a}-2-again") for a in range(LATE)
    ]
    await produce(bootstrap, settings.input_topic, accounts[:DUPLICATES] + late)
    await wait_until(
        lambda: (
            total(workers, "seqguard_events_duplicate_total") >= DUPLICATES
            and total(workers, "seqguard_order_violations_total") >= LATE + 1
        ),
        timeout=60,
        what="duplicates and late events counted",
    )
    # Replaying the rejected late events: behind their sequence again, dead-lettered again
    # (seqguard_replayed_events_total{outcome="dead_lettered"}, the dashboard's replay panel).
    run_cli(scene.deployment, "dlq", "replay", "--error-class", "order_violation")
    await wait_until(
        lambda: total(workers, "seqguard_replayed_events_total") >= LATE + 1,
        timeout=60,
        what="the replayed late events counted by outcome",
    )


async def firing(
    prom: PrometheusServer, name: str, at_least: float = 0.0, timeout: float = 45.0, **labels: str
) -> list[dict[str, Any]]:
    """The firing alerts ``name`` whose labels include ``labels`` and whose value is at least
    ``at_least``, once there is one (its value follows the counters a scrape or two late)."""

    def matching() -> list[dict[str, Any]]:
        return [
            a
            for a in prom.alerts(name)
            if all(a["labels"].get(k) == v for k, v in labels.items()) and float(a["value"]) >= at_least
        ]

    try:
        return await wait_until(matching, timeout=timeout, what=f"{name} {labels} >= {at_least} firing")
    except AssertionError as exc:
        active = [(a["labels"], a["value"]) for a in prom.alerts(state=None)]
        raise AssertionError(f"{exc}; active alerts: {active}") from None


def owners_now(workers: list[Worker]) -> dict[int, str] | None:
    """partition -> the instance that owns it, once every worker is ready and not rebalancing
    and each partition is exported by exactly one of them; else None."""
    owners: dict[int, str] = {}
    for w in workers:
        status, health = w.get("/healthz")
        if status != 200 or health["rebalancing"]:
            return None
        for p in exported_partitions(w):
            if p in owners:
                return None  # two workers export it: mid-rebalance (or a stale gauge: never settles)
            owners[p] = instance(w)
    return owners if sorted(owners) == list(range(PARTITIONS)) else None


async def parked_alerts_follow_owners(scene: Scene, what: str, owner: str | None = None) -> dict[int, str]:
    """Until the firing AggregatesParked alerts are exactly (owner, partition) for every
    partition (each has a parked aggregate): none missing, none from a former owner.
    ``owner``: an instance that must own a partition by then (a worker that just joined)."""

    def consistent() -> dict[int, str] | None:
        owners = owners_now(scene.workers)
        if owners is None or (owner is not None and owner not in owners.values()):
            return None
        alerting = {(a["labels"]["instance"], a["labels"]["partition"]) for a in scene.prom.alerts("AggregatesParked")}
        return owners if alerting == {(i, str(p)) for p, i in owners.items()} else None

    try:
        return await wait_until(consistent, timeout=90, what=what, interval=0.5)
    except AssertionError as exc:
        owners = {instance(w): sorted(exported_partitions(w)) for w in scene.workers}
        alerts = [
            (a["labels"]["instance"], a["labels"]["partition"], a["state"])
            for a in scene.prom.alerts("AggregatesParked", state=None)
        ]
        raise AssertionError(f"{exc}; workers export {owners}; alerts {alerts}") from None


async def test_late_never_seen_events_fire_event_order_violation(scene: Scene) -> None:
    (alert,) = await firing(scene.prom, "EventOrderViolation", LATE, type="account.updated", action="rejected")
    await firing(scene.prom, "EventOrderViolation", 1, type="stock.moved", action="rejected")
    assert "`seqguard dlq show --error-class order_violation --type account.updated`" in alert["annotations"]["runbook"]


async def test_redelivered_events_fire_duplicate_event_processing(scene: Scene) -> None:
    (alert,) = await firing(scene.prom, "DuplicateEventProcessing")
    # 30 duplicates among ~150 records: 20%, far above the 1% threshold. Both counters exist
    # at 0 from the worker's start (Metrics.prime), so rate() sees the first batch too.
    assert 0.1 < float(alert["value"]) < 0.5, alert
    assert "idempotency hit rate" in alert["annotations"]["summary"]


async def test_gaps_fire_event_sequence_gap_open_and_skipped(scene: Scene) -> None:
    every = list(range(PARTITIONS))
    partition = DefaultPartitioner()(scene.open_gap_key.encode(), every, every)
    (opened,) = await firing(
        scene.prom, "EventSequenceGap", THRESHOLDS["gap_open_seconds"], gap="open", partition=str(partition)
    )
    (skipped,) = await firing(scene.prom, "EventSequenceGap", 1, gap="skipped", type="stock.moved")
    assert float(opened["value"]) >= THRESHOLDS["gap_open_seconds"], opened
    assert "seqguard gaps" in opened["annotations"]["runbook"], opened
    assert float(skipped["value"]) >= 1, skipped


async def test_parked_aggregates_fire_per_partition_from_their_owner(scene: Scene) -> None:
    owners = await parked_alerts_follow_owners(scene, "AggregatesParked firing for every partition, from its owner")
    assert sorted(owners) == list(range(PARTITIONS)), owners  # every partition alerts, each from its owner


async def test_a_moved_partition_alerts_only_from_its_new_owner(scene: Scene) -> None:
    before = await wait_until(lambda: owners_now(scene.workers), timeout=30, what="two workers settled")
    third = Worker(scene.deployment, "w3")
    Worker.started.remove(third)
    scene.workers.append(third)
    scene.prom.set_targets(WORKERS, scene.worker_targets())
    await third.ready(timeout=90)
    await scene.prom.wait_up(WORKERS, instance(third))
    # Settled: every worker ready, the third one owns a partition (so one moved), each
    # partition exported by one worker only; then the alerts must come from the owners only.
    owners = await parked_alerts_follow_owners(
        scene, "the third worker owns a partition, every AggregatesParked from its owner", owner=instance(third)
    )
    moved = {p for p, owner in owners.items() if before[p] != owner}
    assert moved, f"no partition moved: {before} -> {owners}"
    # In Prometheus too: no partition's gauge comes from two workers, none from a former owner.
    for gauge in PARTITION_GAUGES:
        assert scene.prom.query(f"count by (partition) ({gauge}) > 1") == [], gauge
        for p in moved:
            stale = f'{gauge}{{instance="{before[p]}",partition="{p}"}}'
            assert scene.prom.query(stale) == [], f"{before[p]} still exports {gauge} of partition {p}"
    lag = f'seqguard_consumer_lag_records{{topic="{scene.deployment.settings().input_topic}"}}'
    assert scene.prom.query(f"count by (partition) ({lag}) > 1") == []


# Panels the scenario drives: their queries, without the `or on () vector(0)` fallback,
# must find series (DATA) or a value above 0 (POSITIVE). The others only have to run.
DATA, POSITIVE = "data", "positive"
DRIVEN = {
    "Open sequence gaps": POSITIVE,
    "Oldest open gap": DATA,  # its age restarts when the rebalance resets the gap clock
    "Parked aggregates": POSITIVE,
    "Idempotency hit rate (5m)": POSITIVE,
    "DLQ waiting records": POSITIVE,
    "Workers up": POSITIVE,
    "Open sequence gaps by partition": POSITIVE,
    "Oldest open gap by partition": DATA,
    "Gaps skipped and parked / s": POSITIVE,
    "Order violations / s": POSITIVE,
    "Idempotency hit rate": POSITIVE,
    "Duplicates / s by type": POSITIVE,
    "Received and applied / s": POSITIVE,
    "Applied / s by type": POSITIVE,
    "Out of order (buffered) / s by type": POSITIVE,
    "Buffered events by partition": POSITIVE,
    "Parked aggregates by partition": POSITIVE,
    "Consumer lag by partition": DATA,
    "DLQ inflow / s by error class": POSITIVE,
    "DLQ waiting records by error class": POSITIVE,
    "Replay results / s": POSITIVE,
    "Apply lag p50 / p99": POSITIVE,
    "Batch duration p50 / p99": POSITIVE,
    "Workers and DLQ agent up": POSITIVE,
}
FALLBACK = re.compile(r"\s+or on \(\) vector\(0\)$")


def grafana_to_promql(expr: str) -> str:
    # A window as long as the scenario: rates still see its events when this test runs.
    return expr.replace("$__rate_interval", "5m")


async def test_every_dashboard_query_runs_and_driven_panels_show_data(scene: Scene) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("targets")]
    assert {p["title"] for p in panels} >= set(DRIVEN), "DRIVEN names panels the dashboard does not have"
    for panel in panels:
        assert panel["fieldConfig"]["defaults"].get("noValue") == "0", panel["title"]
        results = [scene.prom.query(grafana_to_promql(t["expr"])) for t in panel["targets"]]
        assert any(results), f"{panel['title']}: no series (Grafana would show No data)"
        expect = DRIVEN.get(panel["title"])
        if expect is None:
            continue
        raw = [scene.prom.query(FALLBACK.sub("", grafana_to_promql(t["expr"]))) for t in panel["targets"]]
        values = [float(s["value"][1]) for r in raw for s in r]
        assert values, f"{panel['title']}: only the vector(0) fallback answered"
        if expect == POSITIVE:
            assert max(values) > 0, f"{panel['title']}: {raw}"


async def test_every_rule_evaluates_and_the_healthy_parts_stay_quiet(scene: Scene) -> None:
    broken = [(r["name"], r.get("lastError")) for r in scene.prom.rules() if r["health"] != "ok"]
    assert broken == [], broken
    quiet = ("WorkerDown", "NoWorkersUp", "DLQAgentDown", "WorkerPausedOnOutage", "LedgerFailOpen")
    noisy = [a["labels"] for a in scene.prom.alerts(state=None) if a["labels"]["alertname"] in quiet]
    assert noisy == [], noisy


def exported_names(exposition: str) -> set[str]:
    """The sample names an exposition can carry, from its TYPE lines (a labelled metric with no
    sample yet still has one): a histogram by its own name (as text names it) and its series'."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


async def test_every_metric_the_rules_and_dashboard_name_is_exported(scene: Scene) -> None:
    exported = exported_names(read(f"{scene.agent_url}/metrics"))
    for w in scene.workers:
        exported |= exported_names(w.metrics())
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    named = set(re.findall(r"\bseqguard_[a-z_]+", ALERTS.read_text() + "\n".join(exprs)))
    assert named - exported == set(), f"named by the rules or the dashboard, exported by no process: {named - exported}"
