"""`seqguard demo`: the zero-setup run on the embedded broker.

Starts the embedded broker, a Redis (the configured one if it answers, else a private
redis-server), and a `seqguard worker` process; sends the reference scenarios (orders
and builds) shuffled and duplicated, with one order missing an event (a gap) and one
malformed record; then prints what happened per aggregate.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from workers.envelope import encode_binary, encode_structured
from workers.kafka import clients
from workers.kafka.embedded import free_port, start_broker, wait_for_port
from workers.kafka.read import read_to_end
from workers.settings import Settings

ORDER_FLOW = ["order.created", "order.paid", "order.reserved", "order.shipped", "order.delivered"]
BUILD_FLOW = ["build.start", "build.progress", "build.complete", "service.create"]
GAP_TIMEOUT = 3.0
REFERENCE_POLICIES = Path(__file__).resolve().parent / "domains" / "policies.toml"


def scenario(aggregates: int, rng: random.Random) -> tuple[list[tuple[str, int, str, Any]], str]:
    """(aggregate, seq, type, data) for every event, and the aggregate that will have a gap."""
    events = []
    for i in range(aggregates):
        for seq, event_type in enumerate(ORDER_FLOW, 1):
            data: dict[str, Any] = {}
            if event_type == "order.paid":  # half v1 (amount), half v2 (amount_cents): the upcaster joins them
                data = {"amount": 12.5 + i} if i % 2 else {"amount_cents": 1250 + i, "currency": "EUR"}
            events.append((f"order-{i:03d}", seq, event_type, data))
        for seq, event_type in enumerate(BUILD_FLOW, 1):
            events.append((f"build-{i:03d}", seq, event_type, {"step": seq}))
    gap_victim = "order-000"
    events = [e for e in events if not (e[0] == gap_victim and e[1] == 3)]  # order.reserved never arrives
    return events, gap_victim


def to_record(
    aggregate: str, seq: int, event_type: str, data: Any, binary: bool
) -> tuple[bytes, list[tuple[str, bytes]], bytes]:
    attrs: dict[str, Any] = {
        "id": f"{aggregate}-{seq}",
        "source": "demo/shop",
        "type": event_type,
        "sequence": seq,
        "data": data,
    }
    if event_type == "order.paid":
        attrs["schemaversion"] = 1 if "amount" in data else 2
    headers, value = (encode_binary if binary else encode_structured)(attrs)
    return aggregate.encode(), headers, value


async def _redis_url(settings: Settings, keep: list[subprocess.Popen[bytes]]) -> str:
    url = settings.redis_url.get_secret_value()
    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        await client.ping()
    except Exception:  # noqa: BLE001 - fall back to a private redis-server
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit(
                "no Redis at SEQGUARD_REDIS_URL and no redis-server binary (apt-get install redis-server)"
            ) from None
        port = free_port()
        keep.append(
            subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""], stdout=subprocess.DEVNULL
            )
        )
        wait_for_port(port)
        return f"redis://127.0.0.1:{port}/0"
    else:
        return url
    finally:
        await client.aclose()


async def _read_topic(bootstrap: str, topic: str) -> list[Any]:
    return (await read_to_end(bootstrap, topic, quiet=0.3)).records


def _demo_env(broker_url: str, workdir: Path) -> dict[str, str]:
    return {
        "SEQGUARD_BROKER_URL": broker_url,
        "SEQGUARD_APP_ID": f"demo{int(time.time())}",
        "SEQGUARD_GAP_TIMEOUT": str(GAP_TIMEOUT),
        # The reference domains' strategy per type, unless the user brought their own.
        "SEQGUARD_POLICY_FILE": os.environ.get("SEQGUARD_POLICY_FILE") or str(REFERENCE_POLICIES),
        "SEQGUARD_WEB_PORT": str(free_port()),
        "SEQGUARD_DATA_DIR": str(workdir / "data"),
        # Fast group joins and fetches on the embedded broker (docs/embedded-broker.md; Kafka
        # itself refuses sessions < 6 s).
        "SEQGUARD_SESSION_TIMEOUT": "3",
        "SEQGUARD_HEARTBEAT_INTERVAL": "0.3",
        "SEQGUARD_REBALANCE_TIMEOUT": "3",
        # One event's worst case must fit the rebalance timeout (workers/timing.py).
        "SEQGUARD_HANDLER_TIMEOUT": "0.8",
        "SEQGUARD_FETCH_MAX_WAIT_MS": "50",
    }


async def _demo(aggregates: int, seed: int, workdir: Path) -> int:
    rng = random.Random(seed)
    children: list[subprocess.Popen[bytes]] = []
    broker = start_broker(log_path=str(workdir / "broker.log"))
    try:
        env = _demo_env(broker.url, workdir)
        for name in [n for n in os.environ if n.startswith("SEQGUARD_KAFKA_")]:
            del os.environ[name]  # the embedded broker speaks PLAINTEXT, whatever the user's cluster needs
        os.environ.update(env)
        os.environ["SEQGUARD_REDIS_URL"] = await _redis_url(Settings(), children)
        os.environ["SEQGUARD_REDIS_PREFIX"] = f"{env['SEQGUARD_APP_ID']}:"
        settings = Settings()
        print(f"embedded broker on {broker.bootstrap}; worker log: {workdir / 'worker.log'}")
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "worker"],
            stdout=(workdir / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        children.append(worker)
        _wait_ready(settings.web_port, worker)

        events, gap_victim = scenario(aggregates, rng)
        records = [to_record(*e, binary=rng.random() < 0.3) for e in events]
        rng.shuffle(records)
        dups = rng.sample(records, len(records) // 10)
        sent = records + dups
        rng.shuffle(sent)
        sent.append((b"order-bad", [("content-type", b"application/cloudevents+json")], b"{not json"))
        producer = clients.producer(broker.bootstrap)  # the embedded broker: PLAINTEXT
        await producer.start()
        for key, headers, value in sent:
            await producer.send(settings.input_topic, value, key=key, headers=headers)
        await producer.stop()
        print(
            f"sent {len(sent)} records: {len(events)} events of {aggregates} orders and {aggregates} builds, "
            f"shuffled, {len(dups)} duplicates, 1 malformed; {gap_victim} never gets sequence 3"
        )

        deadline = time.monotonic() + 60 + GAP_TIMEOUT
        applied: list[Any] = []
        while time.monotonic() < deadline:
            applied = await _read_topic(broker.bootstrap, settings.output_topic)
            if len(applied) >= len(events):
                break
            await asyncio.sleep(0.5)
        audit = [json.loads(r.value) for r in await _read_topic(broker.bootstrap, settings.audit_topic)]
        dlq = await _read_topic(broker.bootstrap, settings.dlq)
        metrics = _get(settings.web_port, "/metrics").decode()
        return await _report(settings, events, sent, applied, audit, dlq, metrics)
    finally:
        for child in reversed(children):
            child.terminate()
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                child.kill()
        broker.stop()


async def _report(
    settings: Settings, events: list, sent: list, applied: list, audit: list, dlq: list, metrics: str
) -> int:
    from workers.effects import Effects

    expected: dict[str, list[int]] = defaultdict(list)
    for agg, seq, _, _ in events:
        expected[agg].append(seq)
    sent_count = Counter(r[0].decode() for r in sent)
    out: dict[str, list[int]] = defaultdict(list)
    for r in sorted(applied, key=lambda r: (r.partition, r.offset)):
        out[r.key.decode()].append(_seq(r))
    gaps = {a["aggregate"]: (a["first"], a["last"]) for a in audit if a["kind"] == "gap_skipped"}
    arrival: dict[str, list[int]] = defaultdict(list)
    for key, headers, value in sent:
        if key != b"order-bad":
            arrival[key.decode()].append(_sent_seq(headers, value))
    redis = Redis.from_url(settings.redis_url.get_secret_value())
    effects = Effects(redis, prefix=settings.redis_prefix)
    ok = True
    print(f"\n{'aggregate':<11} {'sent':>4} {'dup':>4} {'early':>5}  {'applied order':<20} {'gap':<6} state")
    for agg in sorted(expected):
        seqs = out.get(agg, [])
        in_order = seqs == sorted(expected[agg])
        ok &= in_order
        early = _arrived_early(arrival[agg])
        domain = "order" if agg.startswith("order") else "build"
        state = await effects.state(domain, agg)
        gap = "-" if agg not in gaps else f"{gaps[agg][0]}..{gaps[agg][1]}"
        mark = "" if in_order else "  <-- WRONG"
        print(
            f"{agg:<11} {sent_count[agg]:>4} {sent_count[agg] - len(expected[agg]):>4} {early:>5}  "
            f"{','.join(map(str, seqs)):<20} {gap:<6} {state}{mark}"
        )
    emails = await effects.outbox("emails")
    await redis.aclose()
    total = lambda name: sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name))  # noqa: E731
    print(
        f"\napplied {int(total('seqguard_events_applied_total'))}, duplicates skipped {int(total('seqguard_events_duplicate_total'))}, "
        f"buffered out of order {int(total('seqguard_events_out_of_order_total'))}, gaps {int(total('seqguard_gaps_skipped_total'))}, "
        f"dead-lettered {len(dlq)} ({', '.join(_dlq_classes(dlq)) or 'none'}), confirmation emails {len(emails)} for {len(expected) // 2} orders"
    )
    print("every aggregate applied in sequence order" if ok else "ORDER VIOLATED")
    return 0 if ok and len(emails) == len(expected) // 2 else 1


def _seq(record: Any) -> int:
    return _sent_seq(record.headers, record.value)


def _sent_seq(headers: Any, value: bytes) -> int:
    for k, v in headers:
        if k == "ce_sequence":
            return int(v)
    return int(json.loads(value)["sequence"])


def _arrived_early(seqs: list[int]) -> int:
    """Events that arrived while a lower number was still missing."""
    seen: set[int] = set()
    early = 0
    for s in seqs:
        if any(lower not in seen for lower in range(1, s)) and s not in seen:
            early += 1
        seen.add(s)
    return early


def _dlq_classes(dlq: list[Any]) -> list[str]:
    return [dict(r.headers).get("seqguard-error-class", b"?").decode() for r in dlq]


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:  # noqa: S310 - loopback
        return bytes(resp.read())


def _wait_ready(port: int, worker: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with {worker.returncode}; see its log")
        try:
            _get(port, "/healthz")
        except OSError:
            time.sleep(0.2)
        else:
            return
    raise SystemExit("the worker did not become ready")


def run_demo(aggregates: int = 20, seed: int = 7) -> int:
    workdir = Path("data/demo")
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_demo(aggregates, seed, workdir))
