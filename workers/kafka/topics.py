"""Create every topic seqguard uses, in advance, with explicit partition counts.

Kafka clusters often disable auto-creation, and the embedded broker auto-creates any
topic a metadata request names with 4 partitions (docs/embedded-broker.md): either way,
waiting for a consumer to create a topic gets the partition count wrong. Retention
(SEQGUARD_DLQ_RETENTION, SEQGUARD_AUDIT_RETENTION) is set only here, at creation: an existing
topic keeps its configuration (change it with kafka-configs.sh --alter). A broker that
cannot be reached here is a StartupError: the worker exits instead of running silently.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaConnectionError

from workers.errors import StartupError
from workers.kafka import clients
from workers.settings import Settings

log = logging.getLogger(__name__)

TABLES = ("state",)
COMPACT = {"cleanup.policy": "compact"}


def retention(seconds: float) -> dict[str, str]:
    """``retention.ms`` of a delete-policy topic: -1 keeps records for ever."""
    return {"retention.ms": "-1" if seconds == -1 else str(max(1, round(seconds * 1000)))}


def dlq_configs(settings: Settings) -> dict[str, str]:
    """The DLQ keeps a record until it is replayed or resolved: a strict aggregate parked longer
    than a time limit would lose the only copy of its failed event. No size limit either, so a
    cluster default ``log.retention.bytes`` cannot delete records behind seqguard's back."""
    return {**retention(settings.dlq_retention), "retention.bytes": "-1"}


def wanted_topics(settings: Settings) -> list[NewTopic]:
    n, rf = settings.partitions, settings.replication_factor
    topics = [
        NewTopic(settings.input_topic, n, rf),
        NewTopic(settings.repartition_topic, n, rf),
        # Operator commands: co-partitioned with the input (same count, keyed by aggregate),
        # so an aggregate's commands reach the worker that owns its input partition.
        NewTopic(settings.control_topic, n, rf),
        NewTopic(settings.output_topic, n, rf),
        NewTopic(settings.dlq, n, rf, topic_configs=dlq_configs(settings)),
        NewTopic(settings.audit_topic, 1, rf, topic_configs=retention(settings.audit_retention)),
        NewTopic(settings.markers_topic, 1, rf, topic_configs=COMPACT),
        # Faust's leader-election topic: one partition, as Faust itself declares it.
        NewTopic(settings.assignor_leader_topic, 1, rf),
    ]
    topics += [NewTopic(settings.changelog_topic(t), n, rf, topic_configs=COMPACT) for t in TABLES]
    return topics


TOPIC_ALREADY_EXISTS = 36  # another worker created it first: fine


def _check_created(response: Any) -> None:
    """CreateTopics reports errors per topic instead of raising: raise them."""
    failed = [
        f"{topic}: {message or code}"
        for topic, code, *rest in response.topic_errors
        for message in [rest[0] if rest else ""]
        if code not in (0, TOPIC_ALREADY_EXISTS)
    ]
    if failed:
        raise StartupError("cannot create topics: " + "; ".join(failed))


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics; return their names. Raises StartupError if Kafka is unreachable."""
    admin = clients.admin(settings, request_timeout_ms=int(settings.startup_timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), settings.startup_timeout)
        existing = set(await asyncio.wait_for(admin.list_topics(), settings.startup_timeout))
        missing = [t for t in wanted_topics(settings) if t.name not in existing]
        if missing:
            response = await asyncio.wait_for(admin.create_topics(missing), settings.startup_timeout)
            _check_created(response)
            log.info("created topics: %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    except (TimeoutError, OSError, KafkaConnectionError) as exc:
        raise StartupError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc!r}") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("aiokafka"):
            raise StartupError(f"Kafka at {settings.bootstrap_servers} refused: {exc!r}") from exc
        raise
    finally:
        await admin.close()
