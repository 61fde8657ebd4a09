"""The operator's commands as an operator runs them: real `seqguard` processes against the
embedded broker, a worker that really dead-letters, and a terminal (a pty) where one matters."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from importlib.metadata import version

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.harness import ROOT, Deployment, Worker, consume_all, produce, run_cli
from workers.envelope import decode
from workers.kafka.embedded import free_port

CE = [("content-type", b"application/cloudevents+json")]


def seqguard(deployment: Deployment | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`seqguard ARGS` with stdin, stdout and stderr not terminals; any exit status."""
    base = deployment.env(**env) if deployment is not None else env
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        env={**os.environ, **base},
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def on_terminal(
    deployment: Deployment, *args: str, answer: bytes | None = None, timeout: float = 120.0
) -> tuple[int, str]:
    """`seqguard ARGS` with stdin, stdout and stderr on a pseudo-terminal, as at a shell prompt.
    ``answer`` is typed once the process asks a question ("[y/N]"). Returns (status, all it wrote)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", *args],
        env={**os.environ, **deployment.env()},
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every end of the terminal is closed, the process is gone
                    break
                if not chunk:
                    break
                out += chunk
                if answer is not None and b"[y/N]" in out:
                    os.write(master, answer)
                    answer = None
            elif proc.poll() is not None:
                break
        else:
            raise AssertionError(f"still running after {timeout} s: {out.decode(errors='replace')}")
        return proc.wait(30), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


async def dead_letter(deployment: Deployment, records: list[tuple[bytes, list, bytes | None]]) -> None:
    """A worker dead-letters ``records`` (bad input) and stops: the DLQ then holds exactly them."""
    settings = deployment.settings()
    worker = Worker(deployment)
    try:
        await worker.ready()
        await produce(deployment.broker_url.removeprefix("kafka://"), settings.input_topic, records)
        got = await consume_all(deployment.broker_url.removeprefix("kafka://"), settings.dlq, expect=len(records))
        assert len(got) == len(records), f"{len(got)} of {len(records)} dead-lettered; log: {worker.log_path}"
    finally:
        worker.stop()


def not_json(n: int) -> list[tuple[bytes, list, bytes | None]]:
    return [(f"bad-{i:04d}".encode(), CE, b"{not json") for i in range(n)]


def waiting(deployment: Deployment) -> int:
    return int(json.loads(run_cli(deployment, "dlq", "list", "--json").stdout)["waiting"])


# --------------------------------------------------------------------------- --version


def test_version_is_the_installed_package_version() -> None:
    proc = seqguard(None, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"seqguard {version('seqguard')}"


# --------------------------------------------------------------------------- replay without a filter, progress


async def test_unfiltered_replay_needs_all_and_reports_one_summary_line_off_a_terminal(deployment: Deployment) -> None:
    await dead_letter(deployment, not_json(250))
    refused = seqguard(deployment, "dlq", "replay")
    assert refused.returncode == 2, refused
    assert refused.stdout == "" and len(refused.stderr.splitlines()) == 1 and "--all" in refused.stderr
    assert waiting(deployment) == 250  # nothing was replayed

    done = seqguard(deployment, "dlq", "replay", "--all", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["republished"] == 250  # stdout: the JSON alone
    assert re.fullmatch(
        r"replay: 250 of 250 records republished in (\d+\.\d\d s|\d+m\d\ds) \([\d,]+ records/s\)\n", done.stderr
    )
    assert waiting(deployment) == 0

    both = seqguard(deployment, "dlq", "replay", "--all", "--aggregate", "bad-0001")
    assert both.returncode == 2 and "--all" in both.stderr


async def test_on_a_terminal_unfiltered_replay_asks_first_and_draws_a_bar(deployment: Deployment) -> None:
    await dead_letter(deployment, not_json(250))
    status, out = on_terminal(deployment, "dlq", "replay", answer=b"n\n")
    assert "Replay all 250 waiting record(s)" in out and status == 1, out
    assert "Aborted" in out
    assert waiting(deployment) == 250

    status, out = on_terminal(deployment, "dlq", "replay", answer=b"y\n")
    assert status == 0, out
    # click's bar, redrawn in place per acknowledged chunk (100 records while a bar is drawn)
    assert "\r" in out and "#" in out, out
    assert "250/250" in out and "100%" in out and "records/s" in out, out
    assert re.search(r"100/250\s+40%\s+[\d,]+ records/s, ETA \d+s", out), out  # it moved, with rate and ETA
    assert "republished in" not in out  # the summary line is for logs, not terminals
    assert "republished 250 record(s)" in out
    assert waiting(deployment) == 0


# --------------------------------------------------------------------------- show --payload


async def test_show_payload_prints_the_original_value_and_the_producers_headers(deployment: Deployment) -> None:
    binary_value = b"\xff\xfe\x00 not utf-8"
    await dead_letter(
        deployment,
        [
            (b"odd-1", [("traceparent", b"00-abc-01"), ("x-raw", b"\x80\x81"), ("x-null", None)], binary_value),
            (b"odd-2", [("content-type", b"application/cloudevents+json")], b"{not json"),
        ],
    )
    rows = {r["key"]: r for r in json.loads(run_cli(deployment, "dlq", "show", "--payload", "--json").stdout)}
    first, second = rows["odd-1"]["payload"], rows["odd-2"]["payload"]
    assert first["value_base64"] == base64.b64encode(binary_value).decode() and "value" not in first
    assert first["original_headers"] == [
        {"key": "traceparent", "value": "00-abc-01"},
        {"key": "x-raw", "value_base64": base64.b64encode(b"\x80\x81").decode()},
        {"key": "x-null", "value": None},
    ]
    assert second == {
        "value": "{not json",
        "original_headers": [{"key": "content-type", "value": "application/cloudevents+json"}],
    }
    assert rows["odd-1"]["error-class"] == "deserialization_failed"  # seqguard's headers: apart, as before

    text = run_cli(deployment, "dlq", "show", "--payload").stdout.decode()
    assert "value: {not json" in text
    assert f"value: (base64) {base64.b64encode(binary_value).decode()}" in text
    assert "original headers (3):" in text and "traceparent: 00-abc-01" in text and "x-null: (null)" in text
    assert "seqguard-error-class" not in text
    plain = run_cli(deployment, "dlq", "show").stdout.decode()
    assert "value:" not in plain and "2 record(s)" in plain


# --------------------------------------------------------------------------- resolve --json


async def test_resolve_json_says_what_was_sent_and_where(deployment: Deployment, broker) -> None:
    out = json.loads(
        run_cli(
            deployment,
            "aggregates",
            "resolve",
            "build-9",
            "--skip-to",
            "4",
            "--reason",
            "lost",
            "--operator",
            "ann",
            "--json",
        ).stdout
    )
    settings = deployment.settings()
    assert out["aggregate"] == "build-9" and out["skip_to"] == 4 and out["operator"] == "ann"
    assert out["control_topic"] == settings.control_topic and out["audit_topic"] == settings.audit_topic
    records = await consume_all(broker.bootstrap, settings.control_topic, expect=1, timeout=30)
    [record] = records
    assert (record.partition, record.offset) == (out["partition"], out["offset"])
    env = decode(record.key, record.value, list(record.headers))
    assert env.id == out["id"] and env.aggregate_id == "build-9"
    assert env.data == {"skip_to": 4, "reason": "lost", "operator": "ann"}


# --------------------------------------------------------------------------- Kafka out of reach


def test_unreachable_broker_is_one_line_and_exit_2_for_every_command() -> None:
    closed = free_port()  # nothing listens there
    env = {"SEQGUARD_BROKER_URL": f"kafka://127.0.0.1:{closed}", "SEQGUARD_OPERATOR": "ann"}
    for args in (
        ("dlq", "list"),
        ("dlq", "list", "--json"),
        ("dlq", "show", "--payload"),
        ("dlq", "replay", "--all"),
        ("dlq", "replay", "--error-class", "handler_exception", "--json"),
        ("aggregates", "resolve", "a-1", "--skip-to", "2", "--reason", "r"),
    ):
        proc = seqguard(None, *args, **env)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stdout == "", (args, proc.stdout)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, (args, proc.stderr)
        assert lines[0].startswith(f"seqguard: cannot reach Kafka at 127.0.0.1:{closed}"), (args, lines)
        assert "Traceback" not in proc.stderr and "Unclosed" not in proc.stderr


# --------------------------------------------------------------------------- seqguard broker


async def test_broker_command_serves_kafka_clients_and_stops_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "broker", "--port", str(port)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)  # type: ignore[union-attr]
        second = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)  # type: ignore[union-attr]
        assert first.strip() == f"embedded broker (Tansu) listening on 127.0.0.1:{port}", first
        assert second.strip() == f"export SEQGUARD_BROKER_URL=kafka://127.0.0.1:{port}", second
        bootstrap = f"127.0.0.1:{port}"
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait("hello", b"world", key=b"k", headers=[("h", b"v")])
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer("hello", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), 30)
        finally:
            await consumer.stop()
        assert (record.key, record.value, list(record.headers)) == (b"k", b"world", [("h", b"v")])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()  # type: ignore[union-attr]
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
        with_closed = seqguard(None, "dlq", "list", SEQGUARD_BROKER_URL=f"kafka://127.0.0.1:{port}")
        assert with_closed.returncode == 2, "the broker is gone with the command"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_broker_command_refuses_a_port_in_use() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = seqguard(None, "broker", "--port", str(port))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"seqguard: port {port} on 127.0.0.1 is in use: choose another with --port (0: any free port)"
    ), proc.stderr
