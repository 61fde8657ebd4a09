"""Every line a real worker and the DLQ agent write is one JSON object, and the decision lines
tell one aggregate's story in order: what the SRE runbook's ``jq 'select(.aggregate_id==...)'``
relies on. Real broker, Redis, worker, CLI and agent processes (SEQGUARD_LOG_FORMAT=json).

build-123 goes through every decision: 3 and 2 arrive before 1 (buffered, then released), 2
again (duplicate), 5 before 4 (a gap skipped after a 1.5 s timeout, then 5 released), 4 after
all (late: dead-lettered), 6 fails in its handler (dead-lettered, the build parks; 7 waits),
an operator resolves the build to 7, and the DLQ agent replays 6 (now late). build-9's
failure is replayed by the agent and applies in order. Other builds flow meanwhile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from tests.harness import LOGS, ROOT, Deployment, Worker, event, produce, run_cli, wait_until
from tests.integration.flaky_builds import fail_flag
from workers.kafka.embedded import free_port

DOMAINS = "workers.domains.orders,tests.integration.flaky_builds"
BUILD = "build-123"
SEVEN = ("decision", "event_id", "aggregate_id", "sequence", "event_type", "topic", "partition", "offset")
STANDARD = ("timestamp", "level", "logger", "event", "worker")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
#: build-123's decisions, in the order they must be logged: (decision, sequence).
EXPECTED = [
    ("buffered", 3),
    ("buffered", 2),
    ("released", 2),
    ("released", 3),
    ("duplicate", 2),
    ("buffered", 5),
    ("gap_skipped", 4),
    ("released", 5),
    ("late", 4),
    ("dead_lettered", 4),
    ("dead_lettered", 6),
    ("parked", 6),
    ("buffered", 7),
    ("resolved", None),
    ("released", 7),
    ("replayed", 6),
    ("late", 6),
    ("dead_lettered", 6),
]


def lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON; fails on the first line that is not one object."""
    out = []
    for n, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise AssertionError(f"{path}:{n} is not JSON: {text[:300]!r}") from exc
        assert isinstance(obj, dict), f"{path}:{n} is not an object: {text[:300]!r}"
        out.append(obj)
    return out


def decisions(path: Path, aggregate: str) -> list[tuple[str, int | None]]:
    """(decision, sequence) of ``aggregate``'s decision lines, in file order (tolerates a line
    being written at the moment it is read: only the worker writes, one line per write)."""
    found = []
    for text in path.read_text(errors="replace").splitlines():
        if f'"aggregate_id":"{aggregate}"' in text and '"decision"' in text:
            try:
                obj = json.loads(text)
            except ValueError:
                continue  # the last line, half written
            found.append((obj["decision"], obj["sequence"]))
    return found


def reached(worker: Worker, aggregate: str, n: int) -> Any:
    return lambda: len(decisions(worker.log_path, aggregate)) >= n


async def test_every_line_is_json_and_an_aggregates_decisions_read_in_order(broker: Any, redis_url: str) -> None:
    deployment = Deployment(
        broker.url,
        redis_url,
        extra={
            "SEQGUARD_DOMAINS": DOMAINS,
            "SEQGUARD_LOG_FORMAT": "json",
            "SEQGUARD_GAP_TIMEOUT": "1.5",
            "SEQGUARD_GAP_CHECK_INTERVAL": "0.3",
            "SEQGUARD_RETRY_BASE_DELAY": "0.05",
            "SEQGUARD_DLQ_AUTO_REPLAY": "handler_exception",
        },
    )
    await deployment.create_topics()
    settings = deployment.settings()
    topic = settings.input_topic
    redis = Redis.from_url(redis_url)
    worker = Worker(deployment)
    agent_log = LOGS / f"{deployment.name}-dlq-agent.log"
    agent: subprocess.Popen[bytes] | None = None
    try:
        await worker.ready()
        others = [event("build-7", s, t) for s, t in enumerate(["build.start", "build.progress", "build.complete"], 1)]
        shuffled = [
            event(BUILD, 3, "build.progress"),
            others[2],
            event(BUILD, 2, "build.progress"),
            event("build-1234", 1, "build.start"),  # an aggregate whose id starts like build-123's
            others[1],
            event(BUILD, 1, "build.start"),
            others[0],
            event(BUILD, 2, "build.progress"),  # again: a duplicate
        ]
        await produce(broker.bootstrap, topic, shuffled)
        await wait_until(reached(worker, BUILD, 5), timeout=60, what="build-123 buffered, released, duplicate")

        await produce(broker.bootstrap, topic, [event(BUILD, 5, "build.progress")])  # 4 never comes in time
        await wait_until(reached(worker, BUILD, 8), timeout=60, what="build-123's gap at 4 skipped")
        await produce(broker.bootstrap, topic, [event(BUILD, 4, "build.progress")])  # late: dead-lettered
        await wait_until(reached(worker, BUILD, 10), timeout=60, what="build-123's late 4 dead-lettered")

        for aggregate in (BUILD, "build-9"):
            await redis.set(fail_flag(settings.redis_prefix, aggregate), 1)  # the build service refuses
        failing = [event(BUILD, 6, "build.progress"), event(BUILD, 7, "build.complete")]
        failing += [event("build-9", 1, "build.start"), event("build-9", 2, "build.progress")]
        await produce(broker.bootstrap, topic, failing + [event("build-9", 3, "build.complete")])
        await wait_until(reached(worker, BUILD, 13), timeout=60, what="build-123 parked at 6, 7 held")
        await wait_until(reached(worker, "build-9", 3), timeout=60, what="build-9 parked at 2, 3 held")
        for aggregate in (BUILD, "build-9"):
            await redis.delete(fail_flag(settings.redis_prefix, aggregate))

        run_cli(
            deployment, "aggregates", "resolve", BUILD, "--skip-to", "7", "--reason", "6 is lost", "--operator", "sre"
        )
        await wait_until(reached(worker, BUILD, 15), timeout=60, what="build-123 resolved to 7")

        agent = subprocess.Popen(  # replays build-9's 2 (it applies) and build-123's 6 (late now)
            [sys.executable, "-m", "workers.cli", "dlq", "agent"],
            env={**os.environ, **deployment.env(SEQGUARD_WEB_PORT=str(free_port()), SEQGUARD_DLQ_AGENT_INTERVAL="0.5")},
            cwd=ROOT,
            stdout=agent_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        await wait_until(reached(worker, BUILD, len(EXPECTED)), timeout=60, what="build-123's 6 replayed")
        await wait_until(reached(worker, "build-9", 5), timeout=60, what="build-9's 2 replayed, 3 released")
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        worker.stop()
        await redis.aclose()

    logged = lines(worker.log_path)  # after a graceful stop: Faust's start-up and shutdown lines too
    assert len(logged) > 50
    for obj in logged:
        assert all(obj.get(k) not in (None, "") for k in STANDARD), obj
        assert ISO_UTC.match(obj["timestamp"]), obj
    assert any(obj["logger"].startswith(("faust", "mode", "aiokafka")) for obj in logged), "third-party lines"
    made = [obj for obj in logged if "decision" in obj]
    assert all(all(k in obj for k in SEVEN) for obj in made), [o for o in made if not all(k in o for k in SEVEN)]

    story = [obj for obj in made if obj["aggregate_id"] == BUILD]
    assert [(o["decision"], o["sequence"]) for o in story] == EXPECTED
    by = {(o["decision"], o["sequence"]): o for o in story}
    assert by[("buffered", 3)]["next_expected"] == 1 and by[("buffered", 7)]["parked"] is True
    assert (by[("gap_skipped", 4)]["first"], by[("gap_skipped", 4)]["last"]) == (4, 4)
    assert by[("dead_lettered", 6)]["error_class"] == "order_violation"  # the replayed one: the last kept
    assert by[("parked", 6)]["reason"] == "handler_exception"
    assert by[("resolved", None)]["skip_to"] == 7 and by[("resolved", None)]["operator"] == "sre"
    assert by[("resolved", None)]["topic"] == settings.control_topic
    assert by[("replayed", 6)]["verdict"] == "late" and by[("replayed", 6)]["replayed_from"]
    first_failure = next(o for o in story if o["decision"] == "dead_lettered" and o["sequence"] == 6)
    assert first_failure["error_class"] == "handler_exception" and "simulated refusal" in first_failure["message"]
    assert all(
        o["topic"] == settings.input_topic and o["offset"] is not None for o in story if o["decision"] == "buffered"
    )
    nine = [(o["decision"], o["sequence"]) for o in made if o["aggregate_id"] == "build-9"]
    assert nine == [("dead_lettered", 2), ("parked", 2), ("buffered", 3), ("replayed", 2), ("released", 3)]

    if shutil.which("jq") is not None:  # the runbook's own command, over the same file
        jq = subprocess.run(
            ["jq", "-c", f'select(.aggregate_id=="{BUILD}")', str(worker.log_path)],
            capture_output=True,
            check=True,
            timeout=30,
        )
        selected = [json.loads(text) for text in jq.stdout.decode().splitlines()]
        assert selected == [obj for obj in logged if obj.get("aggregate_id") == BUILD]
        assert [(o["decision"], o["sequence"]) for o in selected if "decision" in o] == EXPECTED

    passes = lines(agent_log)
    assert any(o["event"].startswith("DLQ:") and o["waiting"] >= 2 for o in passes), passes
    assert all(all(o.get(k) not in (None, "") for k in STANDARD) for o in passes)
