"""Gap timeouts in the running worker: skip records the gap once; park holds until resolved.
Policies come from a policy file, as in production."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import Deployment, Worker, consume_all, event, metric_value, produce, run_cli

POLICIES = """
[types."ledger.entry"]
ordering = "strict"          # strict: gaps always park

[types."page.viewed"]
ordering = "unordered"
"""


def sequences(records: list, aggregate: str) -> list[int]:
    return [
        json.loads(r.value)["sequence"] for r in sorted(records, key=lambda r: r.offset) if r.key.decode() == aggregate
    ]


async def test_gap_is_skipped_once_after_timeout_and_a_late_arrival_is_an_order_violation(
    broker, redis_url, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policies.toml"
    policy_file.write_text(POLICIES)
    deployment = Deployment(
        broker.url,
        redis_url,
        extra={
            "SEQGUARD_GAP_TIMEOUT": "1.5",
            "SEQGUARD_GAP_CHECK_INTERVAL": "0.3",
            "SEQGUARD_POLICY_FILE": str(policy_file),
        },
    )
    await deployment.create_topics()
    settings = deployment.settings()
    worker = Worker(deployment)
    try:
        await worker.ready()
        # acct-1 (ordered, skip): 3 never comes in time. ledger-1 (strict): 2 never comes.
        # page views are unordered: applied on arrival, whatever their numbers.
        await produce(
            broker.bootstrap,
            settings.input_topic,
            [event("acct-1", s, "account.updated") for s in (1, 2, 4, 5)]
            + [event("ledger-1", s, "ledger.entry") for s in (1, 3)]
            + [event("visitor-1", s, "page.viewed") for s in (3, 1, 2)],
        )
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=8, timeout=30, quiet=3)
        assert sequences(out, "acct-1") == [1, 2, 4, 5]
        assert sequences(out, "ledger-1") == [1]  # parked, 3 held
        assert sequences(out, "visitor-1") == [3, 1, 2]
        # Events released by a gap skip (in a sweep, not a batch) are counted like any other.
        assert metric_value(worker.metrics(), "seqguard_events_applied_total") == len(out) == 8
        audit = [
            json.loads(r.value) for r in await consume_all(broker.bootstrap, settings.audit_topic, expect=2, timeout=10)
        ]
        kinds = sorted((a["kind"], a["aggregate"]) for a in audit)
        assert kinds == [("gap_parked", "ledger-1"), ("gap_skipped", "acct-1")]
        skipped = next(a for a in audit if a["kind"] == "gap_skipped")
        assert (skipped["first"], skipped["last"]) == (3, 3)

        # The missing event arrives after its gap was given up: late, dead-lettered, not applied.
        await produce(broker.bootstrap, settings.input_topic, [event("acct-1", 3, "account.updated")])
        dlq = await consume_all(broker.bootstrap, settings.dlq, expect=1, timeout=20)
        assert dict(dlq[0].headers)["seqguard-error-class"] == b"order_violation"

        # The operator resolves the parked ledger: skip 2, continue at 3.
        run_cli(deployment, "aggregates", "resolve", "ledger-1", "--skip-to", "3", "--reason", "entry 2 voided")
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=9, timeout=30, quiet=2)
        assert sequences(out, "ledger-1") == [1, 3]
        assert sequences(out, "acct-1") == [1, 2, 4, 5]  # the late 3 was never applied
        audit = await consume_all(broker.bootstrap, settings.audit_topic, expect=3, timeout=10)
        assert len([a for a in audit if json.loads(a.value)["kind"] == "gap_skipped"]) == 1  # recorded once
    finally:
        worker.stop()
