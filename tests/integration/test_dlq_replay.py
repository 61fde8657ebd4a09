"""The runbook's Scenario 1, end to end: a failed build.progress parks its build, and the
DLQ replay applies it in order. Real broker, real Redis, real worker and CLI processes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from redis.asyncio import Redis

from tests.harness import Deployment, Worker, audit_log, consume_all, event, metric_value, produce, run_cli, wait_until
from tests.integration.flaky_builds import fail_flag
from workers.effects import Effects

DOMAINS = "workers.domains.orders,tests.integration.flaky_builds"


def seqguard(deployment: Deployment, *args: str) -> dict:
    """Run the CLI as an operator would; return its --json output."""
    return json.loads(run_cli(deployment, *args, "--json", SEQGUARD_DOMAINS=DOMAINS).stdout)


def applied_sequences(records: list, aggregate: str) -> list[int]:
    return [
        json.loads(r.value)["sequence"] for r in sorted(records, key=lambda r: r.offset) if r.key.decode() == aggregate
    ]


async def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_failed_progress_parks_build_until_replay_applies_it_in_order(broker, redis_url) -> None:
    deployment = Deployment(
        broker.url, redis_url, extra={"SEQGUARD_DOMAINS": DOMAINS, "SEQGUARD_RETRY_BASE_DELAY": "0.05"}
    )
    await deployment.create_topics()
    settings = deployment.settings()
    redis = Redis.from_url(redis_url)
    effects = Effects(redis, prefix=settings.redis_prefix)
    build, other = "build-42", "build-7"
    await redis.set(fail_flag(settings.redis_prefix, build), 1)  # the build service is down for build-42
    worker = Worker(deployment)
    try:
        await worker.ready()
        await produce(
            broker.bootstrap,
            settings.input_topic,
            [event(build, 1, "build.start"), event(build, 2, "build.progress", {"pct": 50})],
        )

        async def progress_dead_lettered() -> bool:
            return metric_value(worker.metrics(), "seqguard_dead_lettered_total", error_class="handler_exception") >= 1

        await wait_for(progress_dead_lettered, what="build.progress in the DLQ")
        await produce(
            broker.bootstrap,
            settings.input_topic,
            [event(build, 3, "build.complete"), event(build, 4, "service.create")]
            + [
                event(other, s, t)
                for s, t in enumerate(["build.start", "build.progress", "build.complete", "service.create"], 1)
            ],
        )
        # Other builds flow; build-42 holds 3 and 4 (not applied) while 2 is in the DLQ.
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=5, timeout=30)
        assert applied_sequences(out, other) == [1, 2, 3, 4]
        assert applied_sequences(out, build) == [1]
        assert await effects.state("build", build) == "started"
        state = worker.state()[build]
        assert state["p"][:2] == [2, "handler_exception"]  # parked at 2
        assert sorted(b[0] for b in state["buffer"]) == [3, 4]
        assert metric_value(worker.metrics(), "seqguard_handler_retries_total", type="build.progress") == 2

        listing = seqguard(deployment, "dlq", "list")
        assert listing["waiting"] == 1 and listing["by_error_class"] == {"handler_exception": 1}
        shown = seqguard(deployment, "dlq", "show")
        assert shown[0]["aggregate-id"] == build and shown[0]["sequence"] == "2" and shown[0]["attempts"] == "3"
        assert shown[0]["original-topic"] == settings.input_topic

        dry = seqguard(deployment, "dlq", "replay", "--dry-run")
        assert dry["to_replay"] == 1 and dry["republished"] == 0

        await redis.delete(fail_flag(settings.redis_prefix, build))  # the build service is back
        first = seqguard(deployment, "dlq", "replay", "--all")
        assert first["republished"] == 1

        out = await consume_all(broker.bootstrap, settings.output_topic, expect=8, timeout=30)
        assert applied_sequences(out, build) == [1, 2, 3, 4]
        assert await effects.history("build", build) == [
            "1:build.start",
            "2:build.progress",
            "3:build.complete",
            "4:service.create",
        ]
        assert await effects.state("build", build) == "service_created"
        assert worker.state()[build]["p"] is None

        second = seqguard(deployment, "dlq", "replay", "--all")
        assert second["republished"] == 0 and second["already_replayed"] == 1
        await asyncio.sleep(2)
        assert len(await consume_all(broker.bootstrap, settings.output_topic, expect=8, timeout=10)) == 8
    finally:
        worker.stop()
        await redis.aclose()


async def test_v1_and_v2_events_of_one_type_both_apply_through_the_upcaster(
    deployment: Deployment, broker, redis_url
) -> None:
    settings = deployment.settings()
    v1 = [event("ord-v1", 1, "order.created"), event("ord-v1", 2, "order.paid", {"amount": 12.5}, schemaversion=1)]
    v2 = [
        event("ord-v2", 1, "order.created"),
        event("ord-v2", 2, "order.paid", {"amount_cents": 1250, "currency": "USD"}, schemaversion=2),
    ]
    worker = Worker(deployment)
    try:
        await worker.ready()
        await produce(broker.bootstrap, settings.input_topic, v1 + v2)
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=4, timeout=30)
    finally:
        worker.stop()
    assert len(out) == 4
    redis = Redis.from_url(redis_url)
    try:
        effects = Effects(redis, prefix=settings.redis_prefix)
        emails = sorted(await effects.outbox("emails"), key=lambda e: e["order"])
        assert emails == [
            {"order": "ord-v1", "subject": "Order confirmed", "amount_cents": 1250, "currency": "USD"},
            {"order": "ord-v2", "subject": "Order confirmed", "amount_cents": 1250, "currency": "USD"},
        ]
        assert await effects.state("order", "ord-v1") == await effects.state("order", "ord-v2") == "paid"
    finally:
        await redis.aclose()


async def test_refailing_replay_returns_to_dlq_with_count_and_stops_at_the_limit(broker, redis_url) -> None:
    deployment = Deployment(
        broker.url,
        redis_url,
        extra={"SEQGUARD_DOMAINS": DOMAINS, "SEQGUARD_RETRY_BASE_DELAY": "0.01", "SEQGUARD_MAX_REPLAYS": "2"},
    )
    await deployment.create_topics()
    settings = deployment.settings()
    redis = Redis.from_url(redis_url)
    build = "build-broken"
    await redis.set(fail_flag(settings.redis_prefix, build), 1)  # stays broken
    worker = Worker(deployment)
    try:
        await worker.ready()
        await produce(
            broker.bootstrap, settings.input_topic, [event(build, 1, "build.start"), event(build, 2, "build.progress")]
        )
        for expected_records in (1, 2, 3):
            dlq = await consume_all(broker.bootstrap, settings.dlq, expect=expected_records, timeout=30, quiet=1)
            assert len(dlq) == expected_records
            counts = sorted(int(dict(r.headers)["seqguard-replay-count"]) for r in dlq)
            assert counts == list(range(expected_records))
            result = seqguard(deployment, "dlq", "replay", "--all")
            assert result["republished"] == (1 if expected_records < 3 else 0)
        assert result["over_replay_limit"] == 1  # left for an operator, not looped forever
        first_failures = {dict(r.headers)["seqguard-first-failure"] for r in dlq}
        assert len(first_failures) == 1  # the first failure time travels with the record

        # The operator gives up on 2: the build resumes at 3, and the audit topic says who and why.
        await produce(broker.bootstrap, settings.input_topic, [event(build, 3, "build.note", id="c3")])  # no handler
        run_cli(deployment, "aggregates", "resolve", build, "--skip-to", "3", "--reason", "progress lost upstream")


        async def resolved() -> dict[str, Any] | None:  # replays are audited too: wait for this kind
            records = await audit_log(broker.bootstrap, settings.audit_topic, quiet=0.3)
            return next((body for _, body in records if body["kind"] == "resolved"), None)

        record = await wait_until(resolved, timeout=30, what="the resolve's audit record")
        assert (
            record["kind"] == "resolved"
            and record["skipped"] == [2, 2]
            and record["reason"] == "progress lost upstream"
        )
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=2, timeout=30)
        assert applied_sequences(out, build) == [1, 3]
        assert worker.state()[build]["p"] is None
    finally:
        worker.stop()
        await redis.aclose()


async def test_dlq_agent_only_reports_by_default_and_replays_configured_classes(broker, redis_url) -> None:
    from workers.dlq.agent import run_once

    deployment = Deployment(
        broker.url, redis_url, extra={"SEQGUARD_DOMAINS": DOMAINS, "SEQGUARD_RETRY_BASE_DELAY": "0.01"}
    )
    await deployment.create_topics()
    settings = deployment.settings()
    redis = Redis.from_url(redis_url)
    build = "build-flaky"
    await redis.set(fail_flag(settings.redis_prefix, build), 1)
    worker = Worker(deployment)
    try:
        await worker.ready()
        await produce(
            broker.bootstrap,
            settings.input_topic,
            [event(build, 1, "build.start"), event(build, 2, "build.progress"), event(build, 3, "build.complete")],
        )
        await consume_all(broker.bootstrap, settings.dlq, expect=1, timeout=30, quiet=0.5)
        await redis.delete(fail_flag(settings.redis_prefix, build))

        assert await run_once(settings, now=time.time() + 60) == 0  # default: report only
        auto = settings.model_copy(update={"dlq_auto_replay": "handler_exception"})
        assert await run_once(auto, now=time.time()) == 0  # backoff: too soon after the failure
        assert await run_once(auto, now=time.time() + 60) == 1
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=3, timeout=30)
        assert applied_sequences(out, build) == [1, 2, 3]
        assert await run_once(auto, now=time.time() + 60) == 0  # marked: never twice
    finally:
        worker.stop()
        await redis.aclose()
