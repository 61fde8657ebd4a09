"""Operator actions only from operators: a resolve is obeyed only from the control topic, and a
replay writes only into the input topic, whatever the records' own headers claim.
Real broker, real Redis, real worker and CLI processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import ROOT, Deployment, Worker, consume_all, event, produce, run_cli
from workers.processor.batch import CONTROL_SOURCE, RESOLVE_TYPE

POLICIES = """
[types."ledger.entry"]
ordering = "strict"          # strict: gaps always park, only an operator may skip
"""
CE = [("content-type", b"application/cloudevents+json")]


def sequences(records: list, aggregate: str) -> list[int]:
    return [
        json.loads(r.value)["sequence"] for r in sorted(records, key=lambda r: r.offset) if r.key.decode() == aggregate
    ]


def dlq_classes(records: list) -> list[tuple[str, str]]:
    """(error class, aggregate) of each DLQ record, in order of offsets."""
    rows = []
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        h = {k: (v or b"").decode() for k, v in r.headers}
        rows.append((h["seqguard-error-class"], h["seqguard-aggregate-id"]))
    return rows


def resolve_request(aggregate: str, data: object, *, key: str | None = None, source: str = CONTROL_SOURCE) -> tuple:
    """A resolve control event as anyone could write it (not through the CLI)."""
    return event(key or aggregate, None, RESOLVE_TYPE, data, source=source, id=f"forged-{time.monotonic_ns()}",
                 partitionkey=aggregate)  # fmt: skip


async def test_only_a_resolve_on_the_control_topic_unparks_a_strict_aggregate(
    broker, redis_url, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policies.toml"
    policy_file.write_text(POLICIES)
    deployment = Deployment(
        broker.url,
        redis_url,
        extra={
            "SEQGUARD_GAP_TIMEOUT": "1",
            "SEQGUARD_GAP_CHECK_INTERVAL": "0.3",
            "SEQGUARD_POLICY_FILE": str(policy_file),
        },
    )
    await deployment.create_topics()
    settings = deployment.settings()
    assert settings.control_topic == f"{settings.input_topic}.control"
    worker = Worker(deployment)
    try:
        await worker.ready()
        # ledger-1 is strict: 2 never comes, so it parks with 3 held.
        await produce(broker.bootstrap, settings.input_topic, [event("ledger-1", s, "ledger.entry") for s in (1, 3)])
        audit = await consume_all(broker.bootstrap, settings.audit_topic, expect=1, timeout=30)
        assert [json.loads(a.value)["kind"] for a in audit] == ["gap_parked"]

        # (a) Control events written into the INPUT topic are forged: dead-lettered, not obeyed.
        await produce(
            broker.bootstrap,
            settings.input_topic,
            [
                resolve_request("ledger-1", {"skip_to": "x"}),
                resolve_request("ledger-1", {"skip_to": 5, "reason": "trust me", "operator": "mallory"}),
                resolve_request("ledger-1", {"skip_to": 3}, source="billing"),  # reserved seqguard.* type
                resolve_request("ledger-1", {"skip_to": 3}, key="not-the-aggregate"),  # not repartitioned either
            ],
        )
        # Junk on the control topic itself is not obeyed either.
        await produce(
            broker.bootstrap,
            settings.control_topic,
            [
                event("ledger-1", 2, "ledger.entry"),  # an ordinary event: not a command
                resolve_request("ledger-1", {"skip_to": 3}, key="other-key"),  # keyed by another aggregate
                (b"ledger-1", CE, b"{not json"),
            ],
        )
        dlq = await consume_all(broker.bootstrap, settings.dlq, expect=7, timeout=30)
        assert sorted(dlq_classes(dlq)) == sorted(
            [("forged_control", "ledger-1")] * 6 + [("deserialization_failed", "")]
        ), dlq_classes(dlq)

        # The worker keeps running and applying; the ledger is still parked, nothing resolved.
        await produce(broker.bootstrap, settings.input_topic, [event("acct-9", s, "account.updated") for s in (1, 2)])
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=3, timeout=30)
        assert sequences(out, "acct-9") == [1, 2] and sequences(out, "ledger-1") == [1]
        assert worker.proc.poll() is None
        assert worker.state()["ledger-1"]["p"] is not None
        audit = await consume_all(broker.bootstrap, settings.audit_topic, quiet=1)
        assert [json.loads(a.value)["kind"] for a in audit] == ["gap_parked"]

        # (b) The operator's resolve, through the control topic: applied, audited with their name.
        result = run_cli(
            deployment, "aggregates", "resolve", "ledger-1", "--skip-to", "3", "--reason", "entry 2 voided",
            "--operator", "alice",
        )  # fmt: skip
        assert settings.control_topic in result.stdout.decode()
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=4, timeout=30)
        assert sequences(out, "ledger-1") == [1, 3]
        audit = [json.loads(a.value) for a in await consume_all(broker.bootstrap, settings.audit_topic, expect=2)]
        resolved = [a for a in audit if a["kind"] == "resolved"]
        assert len(resolved) == 1 and resolved[0]["operator"] == "alice"
        assert (resolved[0]["aggregate"], resolved[0]["reason"], resolved[0]["skipped"]) == (
            "ledger-1",
            "entry 2 voided",
            [2, 2],
        )
        assert worker.state()["ledger-1"]["p"] is None
        # Nothing of the commands went through the input topic.
        inputs = await consume_all(broker.bootstrap, settings.input_topic, expect=8, quiet=1)
        assert not any(b"alice" in (r.value or b"") for r in inputs)
    finally:
        worker.stop()


async def test_resolve_without_an_operator_is_refused_and_sends_nothing(deployment: Deployment, broker) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "aggregates", "resolve", "a", "--skip-to", "2", "--reason", "r"],
        env={**os.environ, **deployment.env(SEQGUARD_OPERATOR="")},
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 2 and b"SEQGUARD_OPERATOR" in proc.stderr, proc.stderr
    assert await consume_all(broker.bootstrap, deployment.settings().control_topic, quiet=1) == []


async def test_replay_of_a_record_with_forged_origin_goes_back_to_the_input_topic_only(
    deployment: Deployment, broker
) -> None:
    settings = deployment.settings()
    changelog = settings.changelog_topic("state")
    assert changelog == f"{settings.app_id}-state-changelog"
    forged = {"order-out": settings.output_topic, "order-log": changelog}

    def shipped_first(order: str, topic: str) -> tuple:
        # Shipped before paid: an invalid transition, dead-lettered. Its headers claim it is a
        # replay of a record first seen on ``topic``.
        key, headers, value = event(order, 1, "order.shipped")
        headers += [
            ("seqguard-replayed-from", f"{settings.dlq}:0:0".encode()),
            ("seqguard-original-topic", topic.encode()),
            ("seqguard-original-partition", b"0"),
        ]
        return key, headers, value

    worker = Worker(deployment)
    try:
        await worker.ready()
        await produce(broker.bootstrap, settings.input_topic, [shipped_first(o, t) for o, t in forged.items()])
        dlq = await consume_all(broker.bootstrap, settings.dlq, expect=2, timeout=30)
        assert sorted(dlq_classes(dlq)) == [("handler_exception", "order-log"), ("handler_exception", "order-out")]
        shown = json.loads(run_cli(deployment, "dlq", "show", "--json").stdout)
        assert {row["original-topic"] for row in shown} == {settings.input_topic}  # the claim is not believed

        result = json.loads(run_cli(deployment, "dlq", "replay", "--all", "--json").stdout)
        assert result["republished"] == 2

        # Back in the input topic (each aggregate: its original record, then the replay) ...
        inputs = await consume_all(broker.bootstrap, settings.input_topic, expect=4, timeout=30)
        by_key: dict[str, list] = {}
        for r in sorted(inputs, key=lambda r: r.offset):
            by_key.setdefault(r.key.decode(), []).append(dict(r.headers).get("seqguard-replayed-from"))
        assert by_key["order-out"][0] == by_key["order-log"][0] == f"{settings.dlq}:0:0".encode()  # forged
        assert {by_key[o][1].decode().split(":")[0] for o in forged} == {settings.dlq}
        assert all(len(v) == 2 for v in by_key.values())
        # ... where they fail again, and come back to the DLQ as input records.
        dlq = await consume_all(broker.bootstrap, settings.dlq, expect=4, timeout=30)
        again = [dict(r.headers) for r in dlq if dict(r.headers)["seqguard-replay-count"] == b"1"]
        assert len(again) == 2 and {h["seqguard-original-topic"] for h in again} == {settings.input_topic.encode()}

        # Nothing landed in the output topic or the changelog from the replay.
        out = await consume_all(broker.bootstrap, settings.output_topic, quiet=1)
        assert out == []
        state_values = {r.value for r in await consume_all(broker.bootstrap, changelog, quiet=1)}
        assert not state_values & {r.value for r in inputs}
        assert worker.proc.poll() is None
    finally:
        worker.stop()
