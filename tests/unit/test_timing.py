"""Start-up check of the timeouts against each other (workers/timing.py)."""

from __future__ import annotations

import pytest

from workers.errors import StartupError
from workers.settings import Settings
from workers.timing import check, problems, worst_event_seconds


def test_the_defaults_work_together() -> None:
    assert problems(Settings()) == []


def test_one_event_longer_than_the_rebalance_timeout_is_refused() -> None:
    s = Settings(handler_attempts=3, handler_timeout=10, rebalance_timeout=20, retry_base_delay=0.1)
    assert worst_event_seconds(s) == pytest.approx(30.3)
    with pytest.raises(StartupError, match="one event can take 30.3 s"):
        check(s)


def test_a_handler_with_its_own_longer_time_limit_counts() -> None:
    s = Settings(handler_timeout=1, rebalance_timeout=60)
    assert problems(s, [None, 5.0]) == []
    assert "one event can take" in problems(s, [25.0])[0]


def test_heartbeats_and_sessions() -> None:
    found = problems(Settings(session_timeout=6, heartbeat_interval=3, rebalance_timeout=5, handler_timeout=1))
    assert len(found) == 2
    assert "over a third" in found[0] and "under SEQGUARD_SESSION_TIMEOUT" in found[1]
