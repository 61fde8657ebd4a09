"""Session-wide real services: the embedded broker and a Redis (REDIS_URL, else our own)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import LOGS, Deployment, Worker, start_redis
from tests.pg_fixtures import postgres_url, private_postgres  # noqa: F401 - session PostgreSQL fixtures
from workers.kafka.embedded import EmbeddedBroker, start_broker


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    LOGS.mkdir(parents=True, exist_ok=True)
    b = start_broker(log_path=str(LOGS / "tansu.log"))
    yield b
    b.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    proc, url = start_redis()
    yield url
    proc.kill()
    proc.wait(10)


@pytest.fixture
async def deployment(broker: EmbeddedBroker, redis_url: str) -> Deployment:
    d = Deployment(broker.url, redis_url)
    await d.create_topics()
    return d


@pytest.fixture(autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    """Leak guard: whatever a test did, no worker process outlives it."""
    yield
    while Worker.started:
        Worker.started.pop().kill()
