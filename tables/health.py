"""Readiness: is this process's answer complete right now? (Liveness needs no decision: a
process whose event loop answers is alive.)

A worker is ready when the broker confirmed its group membership within the session (it has
joined, and Kafka answers its heartbeats), no rebalance is under way, and its tables are
recovered. The DLQ agent is ready when its last pass succeeded. Not ready is not dead:
restarting a worker that is recovering or cannot reach Kafka would only start it over, so
orchestrators restart on liveness and route, gate rollouts and page on readiness.
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_JOINED = "the broker has not confirmed this worker's group membership within the session timeout"
REBALANCING = "rebalancing"
RECOVERING = "recovering its tables"


@dataclass(frozen=True, slots=True)
class WorkerFacts:
    membership_left: float  # seconds of group membership the broker last confirmed (<= 0: none)
    rebalancing: bool
    recovered: bool  # table recovery completed, and none in progress


def worker_not_ready(facts: WorkerFacts) -> list[str]:
    """Why the worker is not ready, in the order an operator fixes them; empty: ready."""
    reasons = []
    if facts.membership_left <= 0:
        reasons.append(NOT_JOINED + " (still joining, or Kafka is unreachable)")
    if facts.rebalancing:
        reasons.append(REBALANCING)
    if not facts.recovered:
        reasons.append(RECOVERING)
    return reasons


@dataclass(frozen=True, slots=True)
class AgentFacts:
    passes: int  # completed passes, successful or not
    last_error: str | None  # the last pass's error; None if it succeeded (or none ran yet)


def agent_not_ready(facts: AgentFacts) -> list[str]:
    """Why the DLQ agent is not ready; empty: its last pass read the DLQ and replayed what was due."""
    if facts.last_error is not None:
        return [f"the last pass failed: {facts.last_error}"]
    if facts.passes == 0:
        return ["no pass has completed yet (reading the DLQ)"]
    return []
