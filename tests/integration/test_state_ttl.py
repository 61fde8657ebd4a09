"""State of an inactive aggregate expires after SEQGUARD_STATE_TTL; a parked one never does."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.harness import STORES, Deployment, Worker, consume_all, event, produce


@pytest.mark.parametrize("store", STORES)
async def test_idle_aggregate_state_expires_but_a_held_one_stays(broker, redis_url, store: str) -> None:
    deployment = Deployment(
        broker.url, redis_url, extra={"SEQGUARD_STATE_TTL": "2", "SEQGUARD_GAP_CHECK_INTERVAL": "0.3"}, store=store
    )
    await deployment.create_topics()
    settings = deployment.settings()
    worker = Worker(deployment)
    try:
        await worker.ready()
        # idle-1 completes; held-1 waits for its 1 (gap timeout 30 s: still buffered when the TTL passes).
        await produce(
            broker.bootstrap,
            settings.input_topic,
            [event("idle-1", 1, "note"), event("idle-1", 2, "note"), event("held-1", 2, "note")],
        )
        await consume_all(broker.bootstrap, settings.output_topic, expect=2, timeout=30, quiet=0.5)
        state = worker.state()
        assert "idle-1" in state and state["idle-1"]["seen"]
        deadline = time.monotonic() + 20
        while "idle-1" in worker.state():
            assert time.monotonic() < deadline, "idle state never expired"
            await asyncio.sleep(0.3)
        state = worker.state()
        assert "idle-1" not in state
        assert "held-1" in state and state["held-1"]["buffer"]  # never forgotten silently
    finally:
        worker.stop()
