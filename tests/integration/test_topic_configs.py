"""Retention as the broker keeps it: the topics seqguard creates, described back (DescribeConfigs).

The embedded broker stores the configs a topic is created with and describes them back, but
never applies retention (docs/embedded-broker.md): this checks what seqguard asks for, not
what Kafka deletes.
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.harness import Deployment


async def described(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for error, _, _, name, entries in response.resources:
            assert error == 0, (name, error)
            out[name] = {entry[0]: entry[1] for entry in entries}
    return out


async def test_the_dlq_and_audit_topics_are_created_with_the_configured_retention(broker, redis_url) -> None:
    default = Deployment(broker.url, redis_url)
    chosen = Deployment(
        broker.url, redis_url, extra={"SEQGUARD_DLQ_RETENTION": "1209600", "SEQGUARD_AUDIT_RETENTION": "-1"}
    )
    for deployment in (default, chosen):
        await deployment.create_topics()
    d, c = default.settings(), chosen.settings()
    got = await described(broker.bootstrap, [d.dlq, d.audit_topic, c.dlq, c.audit_topic])
    assert got[d.dlq]["retention.ms"] == "-1" and got[d.dlq]["retention.bytes"] == "-1"
    assert got[d.audit_topic]["retention.ms"] == str(90 * 86_400_000)
    assert got[c.dlq]["retention.ms"] == str(14 * 86_400_000) and got[c.dlq]["retention.bytes"] == "-1"
    assert got[c.audit_topic]["retention.ms"] == "-1"
