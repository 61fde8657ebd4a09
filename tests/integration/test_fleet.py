"""A local fleet: the real Procfile under honcho, three workers and the DLQ agent on one host.

`honcho start -c worker=3,dlq=1` gives every process its own PORT, which the Procfile makes
its web port: all four serve their pages. The partitions spread over the three workers. One
worker is then frozen (SIGSTOP: it stops heartbeating without exiting; honcho stops the whole
fleet when any process exits, as foreman does); the two others take over its partitions and
their state: every event is applied once and in order on the output topic. Killing the frozen
worker at the end shows honcho's rule: it stops the others, which exit 0 on its SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness import LOGS, ROOT, Deployment, committed_offsets, consume_all, event, produce, wait_until

AGGREGATES, PER_AGGREGATE = 60, 10
HALF = PER_AGGREGATE // 2
BIN = Path(sys.executable).parent  # the venv's: honcho, and the seqguard the Procfile runs


def get_json(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None  # not listening (yet)


def free_base() -> int:
    """A base port whose worker ports (base, +1, +2) and DLQ agent port (+100) are all free."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 40_000)
        try:
            for port in (base, base + 1, base + 2, base + 100):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free block of ports")


def spread(ports: list[int]) -> dict[int, list[int]] | None:
    """Port -> the partitions that worker owns, once every worker answers and each owns some."""
    owned = {}
    for port in ports:
        status, body = get_json(port, "/gaps")
        if status != 200 or not body["partitions"]:
            return None
        owned[port] = body["partitions"]
    return owned


def applied(records: list[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        out.setdefault(r.key.decode(), []).append(json.loads(r.value)["sequence"])
    return out


async def test_honcho_runs_three_workers_and_the_agent_and_survivors_take_over(deployment: Deployment, broker) -> None:
    settings = deployment.settings()
    base = free_base()
    workers, agent = [base, base + 1, base + 2], base + 100
    log_path = LOGS / f"{deployment.name}-honcho.log"
    env = {**os.environ, **deployment.env(), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("SEQGUARD_WEB_PORT", None)
    honcho = subprocess.Popen(
        [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), "-c", "worker=3,dlq=1", "-p", str(base)]
        + ["-e", os.devnull, "--no-colour"],
        env={**env, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
    )
    frozen_pid = None
    try:
        owned = await wait_until(
            lambda: spread(workers), timeout=90, what=f"three workers sharing the partitions (log: {log_path})"
        )
        assert sorted(p for parts in owned.values() for p in parts) == list(range(settings.partitions)), owned
        for port in workers:
            assert get_json(port, "/readyz")[0] == 200
        await wait_until(lambda: get_json(agent, "/readyz")[0] == 200, timeout=60, what="the DLQ agent ready")
        pids = {port: get_json(port, "/livez")[1]["pid"] for port in workers}
        assert len(set(pids.values())) == 3

        first = [event(f"acct-{a}", s, "account.updated") for s in range(1, HALF + 1) for a in range(AGGREGATES)]
        await produce(broker.bootstrap, settings.input_topic, first)
        await consume_all(broker.bootstrap, settings.output_topic, expect=len(first), timeout=60)

        async def all_committed() -> bool:
            done = await committed_offsets(broker.bootstrap, settings.app_id, settings.input_topic, settings.partitions)
            return done >= len(first)

        await wait_until(all_committed, timeout=60, what="the first half committed")

        victim = workers[0]
        frozen_pid = pids[victim]
        os.kill(frozen_pid, signal.SIGSTOP)  # silent: its session times out, its partitions move
        survivors = workers[1:]

        def took_over() -> dict[int, list[int]] | None:
            now = spread(survivors)
            if now is None or sorted(p for parts in now.values() for p in parts) != list(range(settings.partitions)):
                return None
            return now

        after = await wait_until(took_over, timeout=60, what="the survivors owning every partition")
        assert set(owned[victim]) <= {p for parts in after.values() for p in parts}

        second = [
            event(f"acct-{a}", s, "account.updated")
            for s in range(HALF + 1, PER_AGGREGATE + 1)
            for a in range(AGGREGATES)
        ]
        await produce(broker.bootstrap, settings.input_topic, second)
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=len(first) + len(second), timeout=60)
        by_aggregate = applied(out)
        assert len(by_aggregate) == AGGREGATES
        wrong = {a: seqs for a, seqs in by_aggregate.items() if seqs != list(range(1, PER_AGGREGATE + 1))}
        assert not wrong, f"not applied once in order: {dict(list(wrong.items())[:5])}"

        os.kill(frozen_pid, signal.SIGKILL)  # a process exits: honcho stops the rest (SIGTERM)
        assert honcho.wait(60) != 0  # honcho exits with the first stopped process's code: the kill
        text = log_path.read_text(errors="replace")
        stops = dict(re.findall(r"(\w+\.\d) stopped \(rc=(-?\d+)\)", text))
        started = dict(re.findall(r"(\w+\.\d) started \(pid=(\d+)\)", text))
        assert sorted(started) == ["dlq.1", "worker.1", "worker.2", "worker.3"], text[-2000:]
        killed = next(name for name, pid in started.items() if int(pid) == frozen_pid)
        assert stops.pop(killed) == "-9"
        assert stops == {name: "0" for name in started if name != killed}, stops  # clean exits on SIGTERM
    finally:
        if frozen_pid is not None and honcho.poll() is None:
            os.kill(frozen_pid, signal.SIGKILL)
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)  # honcho stops every process it started
            try:
                honcho.wait(30)
            except subprocess.TimeoutExpired:
                honcho.kill()
                honcho.wait(10)
    await asyncio.sleep(0)
