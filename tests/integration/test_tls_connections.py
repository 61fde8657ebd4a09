"""Security over the wire: a worker, seqguard's own clients and an operator command reach a
Kafka that accepts mutual TLS only (the embedded broker behind a TLS proxy it advertises, so
no client can reach it otherwise), and Redis over TLS with a password."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from aiokafka.errors import KafkaConnectionError
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.harness import LOGS, Deployment, Worker, event, run_cli, sequences_by_aggregate, shuffled_within
from tests.tls import KEY_PASSWORD, Pki, TlsBroker, make_pki, start_tls_broker
from workers.dependencies import redis_client
from workers.kafka import clients
from workers.kafka.embedded import free_port, wait_for_port
from workers.kafka.read import read_to_end
from workers.settings import Settings

CLIENT_CN = "seqguard-test-client"
REDIS_PASSWORD = "redis-password-for-tests"  # noqa: S105 - a test value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(pki: Pki) -> Iterator[TlsBroker]:
    LOGS.mkdir(parents=True, exist_ok=True)
    broker = start_tls_broker(pki, LOGS / "tansu-tls.log")
    yield broker
    broker.stop()


def mutual_tls(pki: Pki) -> dict[str, str]:
    """A client certificate whose key is encrypted: every file setting is used."""
    return {
        "SEQGUARD_KAFKA_SECURITY_PROTOCOL": "SSL",
        "SEQGUARD_KAFKA_SSL_CAFILE": str(pki.ca),
        "SEQGUARD_KAFKA_SSL_CERTFILE": str(pki.client_cert),
        "SEQGUARD_KAFKA_SSL_KEYFILE": str(pki.client_key_encrypted),
        "SEQGUARD_KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }


async def test_worker_clients_and_operator_command_over_mutual_tls(
    tls_broker: TlsBroker, pki: Pki, redis_url: str
) -> None:
    deployment = Deployment(tls_broker.url, redis_url, extra=mutual_tls(pki))
    await deployment.create_topics()  # seqguard's admin client
    settings = deployment.settings()
    in_order = [event(f"acct-{a}", s, "account.updated", {"n": s}) for s in range(1, 6) for a in range(20)]
    records = shuffled_within(in_order, 40, random.Random(5))
    malformed = (b"acct-bad", [("content-type", b"application/cloudevents+json")], b"{not json")

    worker = Worker(deployment)
    try:
        await worker.ready()  # Faust's consumer, producer and topic checks; seqguard's sink producer
        producer = clients.producer(settings, linger_ms=5)
        await producer.start()
        try:
            for key, headers, value in [*records, malformed]:
                await producer.send(settings.input_topic, value, key=key, headers=headers)
            await producer.flush()
        finally:
            await producer.stop()
        kafka = clients.kafka(settings)
        out = await read_to_end(
            kafka, settings.output_topic, expect=len(in_order), at_highwater=False, max_wait=120, topic_wait=5
        )
        await read_to_end(kafka, settings.dlq, expect=1, at_highwater=False, max_wait=60, topic_wait=5)
        listing = json.loads(run_cli(deployment, "dlq", "list", "--json").stdout)  # the operator's DLQ reader
    finally:
        worker.stop()

    assert sequences_by_aggregate(out.records) == {f"acct-{a}": [1, 2, 3, 4, 5] for a in range(20)}
    assert listing["waiting"] == 1 and listing["by_error_class"] == {"deserialization_failed": 1}
    # Every connection (the worker's, the command's, the test's) came through TLS with the certificate.
    assert len(tls_broker.proxy.peers) >= 5 and set(tls_broker.proxy.peers) == {CLIENT_CN}


@pytest.mark.parametrize("without", ["certificate", "tls"])
async def test_kafka_refuses_clients_without_the_certificate(tls_broker: TlsBroker, pki: Pki, without: str) -> None:
    settings = Settings(
        broker_url=tls_broker.url,
        **({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": pki.ca} if without == "certificate" else {}),
    )
    admin = clients.admin(settings, request_timeout_ms=5000)
    try:
        with pytest.raises(KafkaConnectionError):
            await asyncio.wait_for(admin.start(), 30)
    finally:
        await admin.close()
    assert tls_broker.proxy.peers == []  # no connection got as far as the broker


@pytest.fixture
def tls_redis(pki: Pki) -> Iterator[int]:
    """A redis-server speaking TLS only, with a password."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server not found: `make test` installs Debian's redis-server")
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)]
    args += ["--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no", "--requirepass", REDIS_PASSWORD]
    proc = subprocess.Popen([server, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.kill()
        proc.wait(10)


async def test_redis_over_tls_with_a_password(tls_redis: int, pki: Pki) -> None:
    url = f"rediss://:{REDIS_PASSWORD}@localhost:{tls_redis}/0"
    redis = redis_client(Settings(redis_url=url, redis_ssl_ca_certs=pki.ca))
    try:
        assert await redis.set("seqguard:tls-test", "1") and await redis.get("seqguard:tls-test") == b"1"
    finally:
        await redis.aclose()

    refused = {
        "no CA": Settings(redis_url=url),  # the private CA is not among the system's
        "wrong password": Settings(redis_url=url.replace(REDIS_PASSWORD, "wrong"), redis_ssl_ca_certs=pki.ca),
        "plain redis://": Settings(redis_url=f"redis://:{REDIS_PASSWORD}@localhost:{tls_redis}/0"),
    }
    errors = {}
    for case, settings in refused.items():
        client = redis_client(settings)
        try:
            await client.ping()
            errors[case] = "answered"
        except (RedisConnectionError, RedisTimeoutError, AuthenticationError) as exc:
            errors[case] = type(exc).__name__
        finally:
            await client.aclose()
    assert "answered" not in errors.values(), errors
