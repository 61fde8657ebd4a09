"""A worker that cannot reach Kafka or Redis at start-up exits non-zero, loudly; it never runs silently."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.harness import Deployment, Worker
from workers.errors import StartupError
from workers.kafka.embedded import free_port
from workers.kafka.topics import _check_created


@pytest.mark.parametrize("missing", ["kafka", "redis"])
async def test_worker_exits_with_status_2_when_a_dependency_is_unreachable(broker, redis_url, missing: str) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    extra = {"SEQGUARD_STARTUP_TIMEOUT": "2"}
    if missing == "kafka":
        extra["SEQGUARD_BROKER_URL"] = f"kafka://{dead}"
    deployment = Deployment(broker.url, f"redis://{dead}/0" if missing == "redis" else redis_url, extra=extra)
    worker = Worker(deployment)
    assert worker.proc.wait(60) == 2
    log = worker.log_path.read_text()
    assert ("cannot reach Kafka" if missing == "kafka" else "cannot reach Redis") in log
    assert "start-up failed" in log


def test_topic_creation_errors_other_than_already_exists_are_raised() -> None:
    ok = SimpleNamespace(topic_errors=[("a", 0, None), ("b", 36, "Topic with this name already exists.")])
    _check_created(ok)
    bad = SimpleNamespace(topic_errors=[("c", 38, "Replication factor: 3 larger than available brokers: 1.")])
    with pytest.raises(StartupError, match="c: Replication factor"):
        _check_created(bad)
