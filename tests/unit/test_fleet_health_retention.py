"""Readiness decisions, the DLQ agent's chunks and markers, retention of the topics seqguard
creates, and the Procfile's ports under honcho. Pure: no broker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tables.health import (
    NOT_JOINED,
    REBALANCING,
    RECOVERING,
    AgentFacts,
    WorkerFacts,
    agent_not_ready,
    worker_not_ready,
)
from workers.dlq.agent import CHUNK_SECONDS, chunk_size
from workers.dlq.index import marker_runs
from workers.kafka.topics import wanted_topics
from workers.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@given(st.floats(-100, 100, allow_nan=False), st.booleans(), st.booleans())
def test_a_worker_is_ready_exactly_when_joined_settled_and_recovered(left: float, rebalancing: bool, recovered: bool):
    reasons = worker_not_ready(WorkerFacts(left, rebalancing, recovered))
    assert (reasons == []) == (left > 0 and not rebalancing and recovered)
    assert [r.startswith(NOT_JOINED) for r in reasons].count(True) == (left <= 0)
    assert (REBALANCING in reasons) == rebalancing and (RECOVERING in reasons) == (not recovered)


def test_the_agent_is_ready_once_a_pass_succeeded_and_while_the_last_did() -> None:
    assert agent_not_ready(AgentFacts(0, None)) == ["no pass has completed yet (reading the DLQ)"]
    assert agent_not_ready(AgentFacts(3, None)) == []
    assert agent_not_ready(AgentFacts(4, "KafkaConnectionError: gone")) == [
        "the last pass failed: KafkaConnectionError: gone"
    ]


@pytest.mark.parametrize(
    ("chunk", "rate", "expected"),
    [(1_000, 0.0, 1_000), (1_000, 10.0, int(10 * CHUNK_SECONDS)), (100, 1_000.0, 100), (1_000, 0.05, 1)],
)
def test_agent_chunks_take_at_most_a_few_seconds_at_the_replay_rate(chunk: int, rate: float, expected: int) -> None:
    assert chunk_size(Settings(dlq_agent_chunk=chunk, replay_rate=rate)) == expected


@dataclass
class Mark:
    key: bytes | None
    value: bytes | None


def test_marker_runs_skip_tombstones_and_keys_not_written_by_seqguard() -> None:
    marks = [
        Mark(b"3:10-14", b"{}"),
        Mark(b"3:15-15", None),
        Mark(b"x:1-2", b"{}"),
        Mark(None, b"{}"),
        Mark(b"0:7", b"{}"),
    ]
    assert marker_runs(marks) == [(3, 10, 14)]


def configs(settings: Settings) -> dict[str, dict[str, str]]:
    return {t.name: dict(t.topic_configs) for t in wanted_topics(settings)}


def test_the_dlq_keeps_records_without_limit_and_the_audit_90_days_by_default() -> None:
    s = Settings(input_topic="in", audit_topic="audit")
    got = configs(s)
    assert got["in.dlq"] == {"retention.ms": "-1", "retention.bytes": "-1"}
    assert got["audit"] == {"retention.ms": str(90 * 86_400_000)}
    assert got["in.dlq.replayed"] == {"cleanup.policy": "compact"}
    assert got[s.changelog_topic("state")] == {"cleanup.policy": "compact"}
    assert got["in"] == got[s.output_topic] == got[s.control_topic] == {}


def test_retention_settings_become_topic_configs() -> None:
    got = configs(Settings(input_topic="in", audit_topic="audit", dlq_retention=7 * 86_400, audit_retention=-1))
    assert got["in.dlq"] == {"retention.ms": str(7 * 86_400_000), "retention.bytes": "-1"}
    assert got["audit"] == {"retention.ms": "-1"}
    assert configs(Settings(dlq_retention=0.5))["seqguard.events.dlq"]["retention.ms"] == "500"


@pytest.mark.parametrize("bad", [0, -2, 0.0001])
def test_a_retention_is_minus_one_or_at_least_a_millisecond(bad: float) -> None:
    with pytest.raises(ValidationError, match="no time limit"):
        Settings(dlq_retention=bad)
    with pytest.raises(ValidationError, match="no time limit"):
        Settings(audit_retention=bad)


def test_honcho_gives_every_procfile_process_its_own_web_port() -> None:
    """The Procfile's web port is honcho's PORT: worker=3,dlq=1 on one host binds four ports."""
    from honcho.environ import expand_processes, parse_procfile

    procfile = parse_procfile((ROOT / "Procfile").read_text())
    assert set(procfile.processes) == {"worker", "dlq"}
    for command in procfile.processes.values():
        assert command.startswith("SEQGUARD_WEB_PORT=${PORT:-"), command
    ports = {p.name: int(p.env["PORT"]) for p in expand_processes(procfile.processes, {"worker": 3}, port=5000)}
    assert ports == {"worker.1": 5000, "worker.2": 5001, "worker.3": 5002, "dlq.1": 5100}
