"""The DLQ agent stops like the worker and says how its passes go. Real broker and agent processes.

A DLQ of 4,000 auto-replayable records (written as the worker writes them: ``dlq_headers``)
is replayed at a limited rate, 100 records a chunk; SIGTERM lands mid-way. The agent finishes
the chunk in flight (republished, audited, marked) and exits 0; a second run replays the rest.
Counted on the input topic by the replay header (the DLQ place each copy came from): every
waiting record republished exactly once over both runs, and each run's republished records
exactly the ones it marked and audited.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from tests.harness import LOGS, ROOT, Deployment, consume_all, metric_value, produce, wait_until
from workers.dlq.index import marker_runs
from workers.dlq.records import REPLAYED_FROM, Failure, dlq_headers
from workers.kafka.embedded import free_port, start_broker
from workers.kafka.read import read_to_end
from workers.records import InRecord

AGGREGATES, PER_AGGREGATE = 400, 10
TOTAL = AGGREGATES * PER_AGGREGATE
AGENT_ENV = {
    "SEQGUARD_DLQ_AUTO_REPLAY": "handler_exception",
    "SEQGUARD_DLQ_AGENT_INTERVAL": "0.5",
    "SEQGUARD_DLQ_AGENT_CHUNK": "100",
    "SEQGUARD_REPLAY_RATE": "1000",  # 4 s for the whole DLQ, whatever the machine: SIGTERM lands mid-way
}


class Agent:
    """A `seqguard dlq agent` process and its web pages."""

    def __init__(self, deployment: Deployment, label: str, **env: str) -> None:
        self.port = free_port()
        self.log_path = LOGS / f"{deployment.name}-dlq-agent-{label}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "dlq", "agent"],
            env={**os.environ, **deployment.env(SEQGUARD_WEB_PORT=str(self.port), **{**AGENT_ENV, **env})},
            cwd=ROOT,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                body = resp.read()
                return resp.status, json.loads(body) if "json" in resp.headers.get("content-type", "") else body
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except OSError:
            return 0, None  # not listening (yet)

    def metric(self, name: str) -> float | None:
        status, body = self.get("/metrics")
        return metric_value(body.decode(), name) if status == 200 else None

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"the agent did not stop within {timeout} s of SIGTERM; log: {self.log_path}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def dead_letters(deployment: Deployment) -> list[tuple[bytes, list[tuple[str, bytes | None]], bytes]]:
    """The DLQ records the worker would have written for TOTAL failed events, an hour ago (so due).
    A quarter of the aggregates failed on the repartition topic (replayed by key), the rest on the
    input topic (replayed to their partition)."""
    settings = deployment.settings()
    old = time.time() - 3600
    out = []
    for a in range(AGGREGATES):
        aggregate = f"acct-{a}"
        topic = settings.repartition_topic if a % 4 == 0 else settings.input_topic
        for seq in range(1, PER_AGGREGATE + 1):
            value = json.dumps({"id": f"{aggregate}-{seq}", "sequence": seq, "type": "account.updated"}).encode()
            source = InRecord(topic, a % settings.partitions, a * 100 + seq, old, aggregate.encode(), value)
            failure = Failure("handler_exception", "the ledger service refused", 3, aggregate, seq, "account.updated")
            headers = dlq_headers(source, failure, worker_id="w-test", max_message=1000, now=old)
            out.append((aggregate.encode(), headers, value))
    return out


async def replays_on_input(bootstrap: str, topic: str) -> list[tuple[str, str, int]]:
    """(DLQ place, aggregate, sequence) of every record on the input topic carrying the replay header."""
    read = await read_to_end(bootstrap, topic, quiet=2.0)
    out = []
    for r in sorted(read.records, key=lambda r: (r.partition, r.offset)):
        place = dict(r.headers).get(REPLAYED_FROM)
        if place is not None:
            out.append((place.decode(), r.key.decode(), json.loads(r.value)["sequence"]))
    return out


async def marked_places(bootstrap: str, deployment: Deployment) -> set[str]:
    settings = deployment.settings()
    read = await read_to_end(bootstrap, settings.markers_topic, quiet=2.0)
    return {f"{settings.dlq}:{p}:{o}" for p, first, last in marker_runs(read.records) for o in range(first, last + 1)}


async def audited_places(bootstrap: str, deployment: Deployment) -> Counter[str]:
    read = await read_to_end(bootstrap, deployment.settings().audit_topic, quiet=2.0)
    bodies = [json.loads(r.value) for r in read.records]
    return Counter(b["dlq"] for b in bodies if b["kind"] == "replayed" and b["by"] == "seqguard dlq agent")


async def test_sigterm_mid_replay_finishes_the_chunk_and_a_second_run_replays_the_rest_once(
    deployment: Deployment, broker
) -> None:
    settings = deployment.settings()
    await produce(broker.bootstrap, settings.dlq, dead_letters(deployment))
    dlq = await consume_all(broker.bootstrap, settings.dlq, expect=TOTAL, timeout=60, quiet=0.5)
    every_place = {f"{r.topic}:{r.partition}:{r.offset}" for r in dlq}
    assert len(every_place) == TOTAL

    first = Agent(deployment, "first")
    try:
        await wait_until(
            lambda: (first.metric("seqguard_dlq_replayed_total") or 0) >= 500,
            timeout=90,
            what="the first agent replaying",
        )
        started = time.monotonic()
        assert first.terminate() == 0, first.log_path
        stopped_in = time.monotonic() - started
    finally:
        first.kill()
    once = await replays_on_input(broker.bootstrap, settings.input_topic)
    n1 = len(once)
    assert 500 <= n1 < TOTAL, f"SIGTERM did not land mid-way: {n1} of {TOTAL} replayed"
    assert n1 % 100 == 0, f"{n1} replayed: the chunk in flight was not finished"
    places1 = Counter(place for place, _, _ in once)
    assert max(places1.values()) == 1
    assert set(places1) == await marked_places(broker.bootstrap, deployment), "republished but not marked"
    assert await audited_places(broker.bootstrap, deployment) == places1
    assert stopped_in < 10, f"{stopped_in:.1f} s from SIGTERM to exit: more than docker stop waits"
    print(f"\nfirst run: {n1} of {TOTAL} replayed, stopped {stopped_in:.2f} s after SIGTERM")

    second = Agent(deployment, "second")
    try:
        await wait_until(
            lambda: second.metric("seqguard_dlq_replayed_total") == TOTAL - n1, timeout=90, what="the rest replayed"
        )
        ended = second.metric("seqguard_dlq_agent_last_pass_timestamp_seconds") or 0
        await wait_until(
            lambda: (second.metric("seqguard_dlq_agent_last_pass_timestamp_seconds") or 0) > ended,
            timeout=30,
            what="a pass after the replay",
        )  # that pass read the agent's own markers back: nothing waits, nothing replayed again
        assert second.metric("seqguard_dlq_replayed_total") == TOTAL - n1
        assert second.metric("seqguard_dlq_waiting_records") == 0
        assert second.metric("seqguard_dlq_agent_up") == 1
        assert second.get("/livez")[0] == 200
        status, ready = second.get("/readyz")
        assert (status, ready["ready"], ready["reasons"]) == (200, True, [])
        assert second.terminate() == 0, second.log_path
    finally:
        second.kill()

    replays = await replays_on_input(broker.bootstrap, settings.input_topic)
    places = Counter(place for place, _, _ in replays)
    assert set(places) == every_place, f"{len(every_place - set(places))} waiting records never replayed"
    assert max(places.values()) == 1, [p for p, n in places.items() if n > 1][:10]
    assert await marked_places(broker.bootstrap, deployment) == every_place
    assert sum((await audited_places(broker.bootstrap, deployment)).values()) == TOTAL
    by_aggregate: dict[str, list[int]] = {}
    for _, aggregate, seq in replays:  # in input-topic order: each aggregate's replays went to one partition
        by_aggregate.setdefault(aggregate, []).append(seq)
    assert all(seqs == list(range(1, PER_AGGREGATE + 1)) for seqs in by_aggregate.values())


async def test_health_pages_and_up_metric_follow_the_passes(redis_url: str) -> None:
    """/livez stays 200; /readyz and seqguard_dlq_agent_up say whether the last pass succeeded:
    they turn when the agent's Kafka goes away (a private broker, killed)."""
    private = start_broker(log_path=str(LOGS / "tansu-dlq-agent-health.log"))
    deployment = Deployment(private.url, redis_url)
    agent = None
    try:
        await deployment.create_topics()
        began = time.time()
        agent = Agent(deployment, "health", SEQGUARD_DLQ_AGENT_INTERVAL="0.3")
        await wait_until(lambda: agent.get("/readyz")[0] == 200, timeout=60, what="the agent ready")
        assert agent.metric("seqguard_dlq_agent_up") == 1
        assert (agent.metric("seqguard_dlq_agent_last_pass_timestamp_seconds") or 0) >= began
        status, live = agent.get("/livez")
        assert status == 200 and live["live"] is True and live["pid"] == agent.proc.pid
        assert agent.get("/healthz")[0] == 200

        private.stop()  # Kafka is gone: passes fail, the agent lives on
        await wait_until(lambda: agent.get("/readyz")[0] == 503, timeout=60, what="/readyz 503 after a failed pass")
        status, ready = agent.get("/readyz")
        assert ready["ready"] is False and ready["reasons"][0].startswith("the last pass failed"), ready
        assert agent.metric("seqguard_dlq_agent_up") == 0
        assert agent.get("/livez")[0] == 200 and agent.get("/healthz")[0] == 503
        assert agent.proc.poll() is None
        await asyncio.sleep(0)  # the loop answers; the agent stops on SIGTERM though passes fail
        assert agent.terminate() == 0, agent.log_path
    finally:
        if agent is not None:
            agent.kill()
        private.stop()


async def test_the_index_reads_only_what_was_appended_and_applies_markers_whenever_they_come(
    deployment: Deployment, broker
) -> None:
    """The agent's place in the DLQ: the whole DLQ once, then only new records; a marker read
    before the record it covers (written ahead here) still keeps that record from waiting."""
    from aiokafka import AIOKafkaProducer

    from workers.dlq.index import DeadLetterIndex
    from workers.dlq.reader import write_markers

    settings = deployment.settings()
    letters = dead_letters(deployment)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:

        async def to_partition_0(records: list[tuple[bytes, list[tuple[str, bytes | None]], bytes]]) -> list[int]:
            sent = [await producer.send(settings.dlq, v, key=k, headers=h, partition=0) for k, h, v in records]
            await producer.flush()
            return [(await fut).offset for fut in sent]

        offsets = await to_partition_0(letters[:50])
        index = DeadLetterIndex(settings)
        assert await index.refresh() == 50
        assert len(index.plan().replay) == 50 and index.already_replayed == 0

        replayed = [index.waiting[f"{settings.dlq}:0:{o}"] for o in offsets[:20]]
        await write_markers(producer, settings.markers_topic, replayed, by="test")
        ahead = offsets[-1] + 1  # the next record's offset: its marker comes first
        await producer.send_and_wait(settings.markers_topic, b"{}", key=f"0:{ahead}-{ahead}".encode())
        assert await index.refresh() == 2  # two markers; not the 50 records again
        assert len(index.waiting) == 30 and index.already_replayed == 20

        later = await to_partition_0(letters[50:60])
        assert later[0] == ahead
        assert await index.refresh() == 10
        assert len(index.waiting) == 39 and index.already_replayed == 21
        assert f"{settings.dlq}:0:{ahead}" not in index.waiting
        assert await index.refresh() == 0
    finally:
        await producer.stop()
