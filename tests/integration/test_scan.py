"""`seqguard scan TOPIC` against the real embedded broker, run as an operator runs it (a subprocess).

(a) A topic seqguard never touched, made with known disorder: late events, copies and holes
over many aggregates on several partitions, in binary and structured mode, one aggregate
split over two partitions, and records that do not decode (one with a header key that is not
UTF-8). The report must give exactly what was put in, computed from that ground truth.
(b) After a real worker ran over shuffled input with duplicates, its output topic scans
clean (exit 0), while its input shows what the shuffle and the copies did.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.harness import (
    ROOT,
    Deployment,
    Worker,
    consume_all,
    event,
    produce,
    run_cli,
    shuffled_within,
    with_duplicates,
)
from tests.integration.test_hostile_records import WireKey, send_raw_batch
from workers.envelope import STRUCTURED_CONTENT_TYPE, encode_binary, encode_structured

PARTITIONS = 4
Record = tuple[bytes | None, list[tuple[str, bytes]], bytes | None]


def scan(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """`seqguard scan ARGS` as a subprocess; unlike ``run_cli``, any exit status is returned."""
    return subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-m", "workers.cli", "scan", *args],
        env={**os.environ, **deployment.env()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def scan_json(deployment: Deployment, *args: str) -> tuple[int, dict[str, Any]]:
    proc = scan(deployment, *args, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    assert "Unclosed" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def cloudevent(aggregate: str, seq: int, eid: str, binary: bool, **attrs: Any) -> tuple[list[tuple[str, bytes]], bytes]:
    attributes = {"id": eid, "source": "scan-test", "type": "order.noted", "sequence": seq, "data": {"n": seq}, **attrs}
    return encode_binary(attributes) if binary else encode_structured(attributes)


@dataclass
class Planted:
    """One aggregate's ground truth: the numbers it has, the holes, the late events and the copies."""

    aggregate: str
    numbers: list[int]
    holes: list[tuple[int, int]]
    late: set[int]
    copies: int = 0
    stream: list[tuple[int, str]] = field(default_factory=list)  # (sequence, id) in the order sent

    @property
    def findings(self) -> bool:
        return bool(self.late or self.copies or self.holes)


def plant(rng: random.Random, aggregate: str, length: int, *, disorder: bool = True) -> Planted:
    numbers = list(range(1, length + 1))
    holes: list[tuple[int, int]] = []
    if disorder:
        starts = range(2, length - 1, 3)
        for start in rng.sample(starts, min(len(starts), rng.randint(0, 2))):  # separated holes, inside 1..length
            holes.append((start, start + rng.randint(0, 1)))
    missing = {n for a, b in holes for n in range(a, b + 1)}
    numbers = [n for n in numbers if n not in missing]
    late = {n for n in numbers[:-1] if disorder and rng.random() < 0.25}
    stream = [(n, f"{aggregate}-{n}") for n in numbers if n not in late]
    for n in sorted(late):  # each after some event with a higher number: out of order, and nothing else is
        first_higher = next(i for i, (m, _) in enumerate(stream) if m > n)
        stream.insert(rng.randint(first_higher + 1, len(stream)), (n, f"{aggregate}-{n}"))
    planted = Planted(aggregate, numbers, sorted(holes), late)
    for _ in range(rng.randint(0, 3) if disorder else 0):  # copies after their original
        i = rng.randrange(len(stream))
        stream.insert(rng.randint(i + 1, len(stream)), stream[i])
        planted.copies += 1
    planted.stream = stream
    return planted


def interleave(streams: list[list[Record]], rng: random.Random) -> list[Record]:
    queues = [list(s) for s in streams if s]
    out = []
    while queues:
        q = rng.choice(queues)
        out.append(q.pop(0))
        if not q:
            queues.remove(q)
    return out


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


async def send_split_and_undecodable(bootstrap: str, topic: str, split: str) -> list[tuple[int, int]]:
    """``split`` 1..6 in order, 1-3 on partition 0 and 4-6 on partition 1 (keyed by something else,
    named by ``partitionkey``); then records that do not decode. Returns their (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(1, 7):
            headers, value = cloudevent(split, n, f"{split}-{n}", n % 2 == 0, partitionkey=split)
            await producer.send_and_wait(topic, value, key=f"k{n}".encode(), headers=headers, partition=int(n > 3))
        ce = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
        bad: list[tuple[bytes, list[tuple[str, bytes]], bytes, int]] = [
            (b"junk-1", ce, b"{not json", 2),
            (b"junk-2", *cloudevent("junk-2", 0, "j2", False), 3),  # sequence 0: out of range
            (b"junk-3", [(k, v) for k, v in cloudevent("junk-3", 1, "j3", True)[0] if k != "ce_type"], b"{}", 0),
        ]
        places = []
        for key, headers, value, partition in bad:
            meta = await producer.send_and_wait(topic, value, key=key, headers=headers, partition=partition)
            places.append((meta.partition, meta.offset))
        # A header key that is not UTF-8: aiokafka alone would fail the whole fetch on it.
        headers, value = cloudevent("junk-4", 1, "j4", False)
        offset = await send_raw_batch(producer, topic, 1, [(b"junk-4", [*headers, (WireKey(b"x-\xff"), b"v")], value)])
        places.append((1, offset))
    finally:
        await producer.stop()
    return places


async def test_scan_reports_exactly_the_disorder_put_in(deployment: Deployment, broker) -> None:
    started = time.monotonic()
    topic = f"{deployment.name}.untouched"  # no worker ever reads it
    await create_topic(broker.bootstrap, topic)
    rng = random.Random(11)
    planted = [plant(rng, f"order-{i}", rng.randint(6, 14)) for i in range(12)]
    planted.append(plant(rng, "clean-1", 5, disorder=False))
    assert sum(len(p.late) for p in planted) and sum(p.copies for p in planted) and sum(len(p.holes) for p in planted)
    streams = [
        [(p.aggregate.encode(), *cloudevent(p.aggregate, n, eid, rng.random() < 0.5)) for n, eid in p.stream]
        for p in planted
    ]
    await produce(broker.bootstrap, topic, interleave(streams, rng))
    undecodable = await send_split_and_undecodable(broker.bootstrap, topic, "split-1")

    rc, report = scan_json(deployment, topic)
    assert rc == 1
    got = {a["aggregate_id"]: a for a in report["aggregates"]}
    expected = {
        p.aggregate: (len(p.late), p.copies, [list(h) for h in p.holes], len(p.stream)) for p in planted if p.findings
    }
    assert {
        k: (a["out_of_order"], a["duplicates"], a["gaps"], a["events"]) for k, a in got.items() if k != "split-1"
    } == expected
    assert all(len(got[p.aggregate]["partitions"]) == 1 for p in planted if p.findings)
    split = got["split-1"]
    assert (split["partitions"], split["out_of_order"], split["gaps"], split["events"]) == ([0, 1], 0, [], 6)
    t = report["totals"]
    assert t["aggregates"] == len(planted) + 1
    assert t["events"] == sum(len(p.stream) for p in planted) + 6
    assert t["out_of_order"] == sum(len(p.late) for p in planted)
    assert t["duplicates"] == sum(p.copies for p in planted)
    assert t["missing"] == sum(b - a + 1 for p in planted for a, b in p.holes)
    assert t["gap_ranges"] == sum(len(p.holes) for p in planted)
    assert (t["split_aggregates"], t["conflicts"], t["undecodable"]) == (1, 0, len(undecodable))
    assert sorted((u["partition"], u["offset"]) for u in report["undecodable"]) == sorted(undecodable)
    assert sum(report["undecodable_by_reason"].values()) == len(undecodable)
    assert any("not UTF-8" in u["error"] for u in report["undecodable"])

    # --aggregate: one aggregate's report; a clean one exits 0.
    some = next(p for p in planted if p.late and p.copies)
    rc, one = scan_json(deployment, topic, "--aggregate", some.aggregate)
    assert rc == 1 and [a["aggregate_id"] for a in one["aggregates"]] == [some.aggregate]
    assert (one["totals"]["out_of_order"], one["totals"]["duplicates"], one["totals"]["undecodable"]) == (
        len(some.late),
        some.copies,
        0,
    )
    rc, clean = scan_json(deployment, topic, "--aggregate", "clean-1")
    assert rc == 0 and clean["totals"]["events"] == 5 and not clean["findings"]

    # The table: rows of the worst aggregates, and the totals.
    table = scan(deployment, topic, "--limit", "3")
    assert table.returncode == 1, table.stderr
    lines = table.stdout.splitlines()
    totals_line = next(line for line in lines if line.startswith("totals:"))
    for text in (
        f"{t['out_of_order']} out of order",
        f"{t['duplicates']} duplicates",
        f"{t['missing']} missing numbers in {t['gap_ranges']} gaps",
        f"{len(undecodable)} undecodable records",
        f"{t['aggregates']} aggregates",
    ):
        assert text in totals_line, (text, totals_line)
    assert sum(1 for line in lines if line.startswith(("order-", "split-"))) == 3
    assert time.monotonic() - started < 60


async def test_since_skips_older_records_and_errors_exit_2(deployment: Deployment, broker) -> None:
    topic = f"{deployment.name}.since"
    await create_topic(broker.bootstrap, topic)
    now_ms = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:  # two hours ago: disorder; now: in order. Same partition, older records first.
        for n in (1, 3, 2, 2):
            headers, value = cloudevent("old", n, f"old-{n}", False)
            await producer.send_and_wait(
                topic, value, key=b"old", headers=headers, partition=0, timestamp_ms=now_ms - 7_200_000
            )
        for n in (1, 2, 3):
            headers, value = cloudevent("new", n, f"new-{n}", True)
            await producer.send_and_wait(topic, value, key=b"new", headers=headers, partition=0, timestamp_ms=now_ms)
    finally:
        await producer.stop()
    rc, everything = scan_json(deployment, topic)
    assert rc == 1 and everything["totals"]["out_of_order"] == 1 and everything["totals"]["duplicates"] == 1
    an_hour_ago = datetime.fromtimestamp(now_ms / 1000 - 3_600, UTC).isoformat()
    for since in ("1h", an_hour_ago):
        rc, recent = scan_json(deployment, topic, "--since", since)
        assert rc == 0, recent
        assert (recent["totals"]["aggregates"], recent["totals"]["events"], recent["skipped_before_since"]) == (1, 3, 4)

    missing = f"{deployment.name}.nope"
    for target, args, message in [
        (topic, ("--since", "yesterday"), "--since 'yesterday' is neither"),
        (missing, (), f"topic '{missing}' does not exist"),
        (topic, ("--bootstrap", "127.0.0.1:1"), "cannot reach Kafka at 127.0.0.1:1"),
    ]:
        proc = scan(deployment, target, *args)
        assert proc.returncode == 2, proc
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr  # one line, no traceback
        assert proc.stdout == ""


async def test_a_topic_still_written_is_read_to_its_end_at_the_start(deployment: Deployment, broker) -> None:
    topic = f"{deployment.name}.live"
    await create_topic(broker.bootstrap, topic)
    first = [(b"live", *cloudevent("live", n, f"live-{n}", False)) for n in range(1, 201)]
    await produce(broker.bootstrap, topic, first)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "workers.cli", "scan", topic, "--json",
        env={**os.environ, **deployment.env()}, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
    await producer.start()
    n = len(first)
    try:  # keep writing, in order, until the scan is done (bounded)
        deadline = time.monotonic() + 60
        while proc.returncode is None and time.monotonic() < deadline:
            for _ in range(20):
                n += 1
                headers, value = cloudevent("live", n, f"live-{n}", False)
                await producer.send(topic, value, key=b"live", headers=headers)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.05)
    finally:
        await producer.stop()
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    report = json.loads(stdout)
    assert time.monotonic() < deadline, "the scan did not end while the topic was written"
    assert len(first) <= report["totals"]["events"] <= n
    assert not report["findings"]


def sent_disorder(records: list[Record]) -> tuple[int, int]:
    """Out-of-order events and duplicates in the order sent (one partition per aggregate): an
    event is out of order when a new id comes with a number below the highest before it."""
    seen: dict[str, set[str]] = {}
    highest: dict[str, int] = {}
    late = copies = 0
    for key, _, value in records:
        assert key is not None and value is not None
        agg, body = key.decode(), json.loads(value)
        if body["id"] in seen.setdefault(agg, set()):
            copies += 1
            continue
        seen[agg].add(body["id"])
        late += body["sequence"] < highest.get(agg, 0)
        highest[agg] = max(highest.get(agg, 0), body["sequence"])
    return late, copies


async def test_a_workers_output_scans_clean(deployment: Deployment, broker) -> None:
    rng = random.Random(5)
    in_order = [event(f"acct-{a}", s, "account.updated", {"n": s}) for s in range(1, 9) for a in range(60)]
    records = with_duplicates(shuffled_within(in_order, 200, rng), 0.05, rng)
    late, copies = sent_disorder(records)
    assert late > 0 and copies == len(records) - len(in_order) > 0
    settings = deployment.settings()
    worker = Worker(deployment)
    try:
        await worker.ready()
        await produce(broker.bootstrap, settings.input_topic, records)
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(in_order), timeout=60, quiet=1.0)
    finally:
        worker.stop()
    assert len(out) == len(in_order)

    report = json.loads(run_cli(deployment, "scan", settings.output_topic, "--json").stdout)  # run_cli: exit 0
    assert not report["findings"] and report["aggregates"] == []
    assert (report["totals"]["aggregates"], report["totals"]["events"]) == (60, len(in_order))

    rc, before = scan_json(deployment, settings.input_topic)  # what the worker was given
    assert rc == 1
    t = before["totals"]
    assert (t["out_of_order"], t["duplicates"], t["missing"], t["split_aggregates"]) == (late, copies, 0, 0)
