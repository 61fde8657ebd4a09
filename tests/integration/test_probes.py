"""The worker's liveness and readiness: /livez answers 200 from the moment the web server is
up, whatever the worker is doing; /readyz answers 503 (with the reasons) until the worker
has joined the group and recovered its tables, 200 then, and 503 again once the broker stops
confirming its membership. Real worker, Redis and a private embedded broker (hung with SIGSTOP:
a refused connection would make the worker stop itself at its next write, app.py's sweep).

Faust starts its web server before its consumer (faust/app/base.py, BootStrategy.server), so
the first answer always comes before the group join.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

from tables.health import NOT_JOINED
from tests.harness import LOGS, Deployment, Worker, wait_until
from workers.kafka.embedded import start_broker


def get_json(port: int, path: str) -> tuple[int, Any]:
    """Status and JSON body, a 503's body too (the harness's ``get`` drops error bodies)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def probes(worker: Worker) -> tuple[int, int, dict | None] | None:
    """(/livez status, /readyz status, /readyz body), or None while nothing listens."""
    try:
        live, _ = await asyncio.to_thread(get_json, worker.port, "/livez")
        ready, body = await asyncio.to_thread(get_json, worker.port, "/readyz")
    except OSError:
        return None
    return live, ready, body


async def test_readiness_waits_for_the_join_and_recovery_and_liveness_answers_throughout(redis_url: str) -> None:
    private = start_broker(log_path=str(LOGS / "tansu-probes.log"))
    deployment = Deployment(private.url, redis_url)
    worker = None
    try:
        await deployment.create_topics()
        partitions = deployment.settings().partitions
        worker = Worker(deployment)
        seen: list[tuple[float, int, int, dict | None]] = []
        started = time.monotonic()
        while not seen or seen[-1][2] != 200:
            assert time.monotonic() - started < 90, f"not ready in 90 s: {seen[-3:]}\n{worker.tail()}"
            assert worker.alive, worker.tail()
            answer = await probes(worker)
            if answer is not None:
                seen.append((time.monotonic() - started, *answer))
            await asyncio.sleep(0.05)
        assert all(live == 200 for _, live, _, _ in seen), "liveness failed while starting"
        _, _, first_status, first_body = seen[0]
        assert first_status == 503 and first_body is not None and first_body["ready"] is False
        assert first_body["reasons"][0].startswith(NOT_JOINED), first_body
        ready = seen[-1][3]
        assert ready is not None and ready["ready"] is True and ready["reasons"] == []
        assert ready["partitions"] == list(range(partitions))
        status, health = worker.get("/healthz")  # the compatibility page: ready too
        assert status == 200 and health["ready"] is True
        print(f"\n/readyz 503 for {seen[-1][0] - seen[0][0]:.1f} s after the web server answered, then 200")

        private.process.send_signal(signal.SIGSTOP)  # a hung broker: heartbeats go unanswered
        t0 = time.monotonic()

        async def not_ready() -> dict | None:
            answer = await probes(worker)
            assert answer is not None and answer[0] == 200, f"liveness failed: {answer}"
            return answer[2] if answer[1] == 503 else None

        body = await wait_until(not_ready, timeout=60, what="/readyz 503 once Kafka stops answering")
        assert body["reasons"][0].startswith(NOT_JOINED), body
        print(f"/readyz 503 {time.monotonic() - t0:.1f} s after the broker hung; /livez still 200")
        for _ in range(5):  # still alive and answering, still not ready
            answer = await probes(worker)
            assert answer is not None and answer[:2] == (200, 503), answer
            await asyncio.sleep(0.2)
        assert worker.alive
    finally:
        if worker is not None:
            worker.kill()  # no broker to leave the group or commit to
        private.stop()  # SIGKILL: ends a stopped process too
