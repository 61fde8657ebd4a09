"""Test harness: real processes (embedded broker, redis-server, seqguard workers), no mocks."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tables.changelog import STATE_TABLE
from workers.envelope import encode_structured
from workers.kafka.embedded import free_port, wait_for_port
from workers.kafka.read import read_to_end
from workers.processor.store import state_view
from workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".pytest_cache" / "logs"

#: Fast group joins on the embedded broker (docs/embedded-broker.md). Never production values.
FAST_KAFKA = {
    "SEQGUARD_SESSION_TIMEOUT": "3",
    "SEQGUARD_HEARTBEAT_INTERVAL": "0.3",
    "SEQGUARD_REBALANCE_TIMEOUT": "3",
    "SEQGUARD_HANDLER_TIMEOUT": "0.8",  # one event's worst case fits the rebalance timeout (workers/timing.py)
    "SEQGUARD_COMMIT_INTERVAL": "1",
    "SEQGUARD_FETCH_MAX_WAIT_MS": "50",
}


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server not found: `make test` installs Debian's redis-server (or set REDIS_URL)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return proc, f"redis://127.0.0.1:{port}/0"


#: The table stores (SEQGUARD_STORE) the state and recovery tests run against, each test once per
#: store (as quixstreams runs its state tests against each of its stores).
STORES = ("memory", "rocksdb")


@dataclass
class Deployment:
    """One isolated seqguard deployment: unique app id, topics and Redis prefix."""

    broker_url: str
    redis_url: str
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:10]}")
    #: SEQGUARD_STORE of its workers. With rocksdb each worker has its own directory under
    #: SEQGUARD_DATA_DIR, named after SEQGUARD_WORKER_ID (else its port, new at every start):
    #: a restart finds its checkpoint when it is given the same SEQGUARD_WORKER_ID.
    store: str = "memory"
    extra: dict[str, str] = field(default_factory=dict)
    postgres_url: str | None = None  # the deployment's own database (tests.pg.fresh_database)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "SEQGUARD_BROKER_URL": self.broker_url,
            "SEQGUARD_REDIS_URL": self.redis_url,
            "SEQGUARD_APP_ID": self.name,
            "SEQGUARD_INPUT_TOPIC": f"{self.name}.events",
            "SEQGUARD_OUTPUT_TOPIC": f"{self.name}.applied",
            "SEQGUARD_AUDIT_TOPIC": f"{self.name}.audit",
            "SEQGUARD_REDIS_PREFIX": f"{self.name}:",
            "SEQGUARD_DATA_DIR": str(LOGS / self.name / "data"),
            "SEQGUARD_STORE": self.store,
            "SEQGUARD_STATE_DUMP": "true",
            "SEQGUARD_GAP_TIMEOUT": "30",
            "SEQGUARD_OPERATOR": "test",  # who `aggregates resolve` names in the audit
            **FAST_KAFKA,
            **({"SEQGUARD_POSTGRES_URL": self.postgres_url} if self.postgres_url else {}),
            **self.extra,
        }
        env.update(overrides)
        return env

    def settings(self) -> Settings:
        saved = dict(os.environ)
        try:
            os.environ.update(self.env())
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    async def create_topics(self) -> None:
        from workers.kafka.topics import ensure_topics

        await ensure_topics(self.settings())


class Worker:
    """A `seqguard worker` process."""

    #: Every worker started, so a failing test cannot leave one running (conftest kills them).
    started: list[Worker] = []

    def __init__(self, deployment: Deployment, label: str = "worker", **overrides: str) -> None:
        Worker.started.append(self)
        self.port = free_port()
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{deployment.name}-{label}-{self.port}.log"
        env = {**os.environ, **deployment.env(SEQGUARD_WEB_PORT=str(self.port), **overrides)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
                return resp.status, json.loads(resp.read()) if "json" in resp.headers.get(
                    "content-type", ""
                ) else resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, None

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}; log: {self.log_path}\n{self.tail()}")
            try:
                status, _ = self.get("/healthz")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout} s; log: {self.log_path}\n{self.tail()}")

    def tables(self) -> dict[str, dict[str, Any]]:
        status, body = self.get("/tables")
        assert status == 200, status
        return body  # type: ignore[no-any-return]

    def state(self) -> dict[str, Any]:
        """The state table as /tables shows it: aggregate -> its record's JSON view."""
        return self.tables()["state"]

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200
        return body.decode() if isinstance(body, bytes) else str(body)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def freeze(self) -> None:
        """SIGSTOP: the process stays alive but silent (no heartbeats): a zombie once its
        session times out. kill() still works on a frozen worker (SIGKILL ends a stopped process)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen worker runs on from where it stopped."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def run_cli(deployment: Deployment, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """Run `seqguard ARGS` as an operator would, against ``deployment``; fail on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env={**os.environ, **deployment.env(**env)},
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# --------------------------------------------------------------------------- producing


def event(
    aggregate: str,
    seq: int | None,
    event_type: str,
    data: Any = None,
    *,
    source: str = "test",
    id: str | None = None,
    **attrs: Any,
) -> tuple[bytes, list[tuple[str, bytes]], bytes]:  # noqa: A002
    body: dict[str, Any] = {"source": source, "type": event_type, "data": data if data is not None else {}, **attrs}
    body["id"] = id if id is not None else f"{aggregate}-{seq}"
    if seq is not None:
        body["sequence"] = seq
    headers, value = encode_structured(body)
    return aggregate.encode(), headers, value


def shuffled_within(items: list[Any], window: int, rng: random.Random) -> list[Any]:
    """Shuffle so that no item moves more than ``window`` places: out of order, but bounded."""
    keyed = [(i + rng.uniform(0, window), item) for i, item in enumerate(items)]
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def with_duplicates(items: list[Any], fraction: float, rng: random.Random, window: int = 50) -> list[Any]:
    out = list(items)
    for i in rng.sample(range(len(items)), int(len(items) * fraction)):
        out.insert(min(len(out), i + rng.randint(1, window)), items[i])
    return out


async def produce(
    bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, list[tuple[str, bytes]], bytes | None]]
) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    count = 0
    try:
        futures = []
        for key, headers, value in records:
            futures.append(await producer.send(topic, value, key=key, headers=headers))
            count += 1
        await producer.flush()
        for fut in futures:
            await fut
    finally:
        await producer.stop()
    return count


async def consume_all(
    bootstrap: str, topic: str, *, expect: int | None = None, timeout: float = 60.0, quiet: float = 2.0
) -> list[Any]:
    """Every record of ``topic`` from the start: until ``expect`` records (then ``quiet`` s more
    to catch extras), or until nothing arrives for ``quiet`` s when ``expect`` is None. Never
    stops at the high-water mark: a worker may still be producing."""
    read = await read_to_end(
        bootstrap, topic, expect=expect, quiet=quiet, at_highwater=False, max_wait=timeout, topic_wait=5.0
    )
    return read.records


def sequences_by_aggregate(records: Iterable[Any]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        out.setdefault(r.key.decode(), []).append(json.loads(r.value)["sequence"])
    return out


# --------------------------------------------------------------------------- state


async def changelog_content(bootstrap: str, settings: Settings) -> dict[str, dict[str, Any]]:
    """The state table as its changelog says, read to the real end (by counting records)."""
    records = await consume_all(bootstrap, settings.changelog_topic(STATE_TABLE), quiet=1.5)
    data: dict[str, Any] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        key = r.key.decode("latin-1")
        if r.value is None:
            data.pop(key, None)
        else:
            data[key] = state_view(r.value)
    return {STATE_TABLE: data}


def diff(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    """Aggregates whose state differs."""
    x, y = a.get(STATE_TABLE, {}), b.get(STATE_TABLE, {})
    return sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))


# --------------------------------------------------------------------------- waiting, audit, offsets


async def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check`` (a function, or a coroutine function) until it returns something truthy,
    and return that; fail after ``timeout`` s saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(interval)


async def audit_log(bootstrap: str, topic: str, *, quiet: float = 1.0) -> list[tuple[float, dict[str, Any]]]:
    """The audit topic, in order, as (the record's timestamp in s: when the worker wrote it, its JSON body)."""
    read = await read_to_end(bootstrap, topic, quiet=quiet, max_wait=30.0, topic_wait=5.0)
    return [(r.timestamp / 1000.0, json.loads(r.value)) for r in sorted(read.records, key=lambda r: r.offset)]


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    """The sum of ``group``'s committed offsets on ``topic``: how many of its records the group
    acknowledged (seqguard acknowledges a batch after its state records were written)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)  # Tansu needs partitions=
    finally:
        await admin.close()
    return sum(max(0, meta.offset) for meta in offsets.values())
