"""HandlerRunner.run under failures: business failures use up attempts and dead-letter, outages
wait (attempts untouched) until the dependency answers, a fence stops the wait.

In-process: hand-written handlers in a small Registry, a fresh Metrics registry, and
Dependencies whose probes are fake async functions (no Redis is reached here).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from redis import exceptions as rx

from workers.context import Context
from workers.dependencies import Dependencies
from workers.envelope import Envelope
from workers.errors import HANDLER_EXCEPTION, TIMEOUT_EXCEEDED, PermanentError, TransientError
from workers.handlers import Registry
from workers.kafka.sink import Fenced
from workers.metrics import Metrics
from workers.processor.runner import HandlerFailure, HandlerRunner
from workers.settings import Settings

TYPE = "t.step"
SETTINGS = Settings(
    retry_base_delay=0.01,
    retry_max_delay=0.02,
    outage_retry_max_delay=0.05,
    handler_timeout=0.5,
    handler_attempts=3,
)


class FakeProbe:
    """A dependency's probe: answers while ``up``; counts how often it was asked."""

    def __init__(self, up: bool = True, *, up_after: int | None = None) -> None:
        self.up = up
        self.up_after = up_after  # comes back from this probe on
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        if self.up_after is not None and self.calls >= self.up_after:
            self.up = True
        if not self.up:
            raise ConnectionRefusedError("fake probe: down")
        return True


class Handler:
    """Sleeps ``sleep`` (or ``sleeps``, one per call, while they last), then raises each
    exception of ``failures`` in turn (one per call), then succeeds."""

    def __init__(
        self,
        failures: list[BaseException],
        *,
        sleep: float = 0.0,
        sleeps: list[float] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.failures = list(failures)
        self.sleep = sleep
        self.sleeps = list(sleeps or [])
        self.metrics = metrics
        self.attempts: list[int] = []  # ctx.attempt of each call
        self.paused: list[float | None] = []  # seqguard_paused as each call saw it

    async def __call__(self, event: Envelope, data: Any, ctx: Context) -> None:
        self.attempts.append(ctx.attempt)
        if self.metrics is not None:
            self.paused.append(sample(self.metrics, "seqguard_paused"))
        pause = self.sleeps.pop(0) if self.sleeps else self.sleep
        if pause:
            await asyncio.sleep(pause)
        if self.failures:
            raise self.failures.pop(0)


def runner(
    handler: Handler,
    *,
    probes: dict[str, FakeProbe] | None = None,
    timeout: float | None = None,
    s: Settings = SETTINGS,
) -> tuple[HandlerRunner, Metrics]:
    registry = Registry()
    registry.handler(TYPE, timeout=timeout)(handler)
    metrics = handler.metrics or Metrics.create()
    deps = Dependencies(dict(probes or {"redis": FakeProbe()}), timeout=0.2)  # type: ignore[arg-type]
    return HandlerRunner(s, registry, None, metrics, deps), metrics


def envelope() -> Envelope:
    return Envelope(id="e1", source="test", type=TYPE, aggregate_id="agg-1", sequence=7, data={})


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def outage_retries(metrics: Metrics, dependency: str) -> float:
    return sample(metrics, "seqguard_outage_retries_total", dependency=dependency) or 0.0


def handler_retries(metrics: Metrics) -> float:
    return sample(metrics, "seqguard_handler_retries_total", type=TYPE) or 0.0


# --- outages wait -----------------------------------------------------------------------


async def test_a_transient_error_waits_until_it_succeeds_paused_then_resumed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="workers.processor.outage")
    metrics = Metrics.create()
    handler = Handler([TransientError("503", "payments") for _ in range(5)], metrics=metrics)
    run, _ = runner(handler)

    assert await run.run(envelope()) is None

    assert handler.attempts == [1, 2, 3, 4, 5, 6]  # one more each try, past handler_attempts
    assert outage_retries(metrics, "payments") == 5
    assert sample(metrics, "seqguard_outages_total", dependency="payments") == 1
    assert handler_retries(metrics) == 0  # no attempt used up
    assert handler.paused == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # paused from the first wait on
    assert sample(metrics, "seqguard_paused") == 0
    assert sample(metrics, "seqguard_dependency_up", dependency="payments") == 1
    assert run.report.paused is None
    lines = [r.getMessage() for r in caplog.records if r.name == "workers.processor.outage"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("PAUSED: payments is unavailable") and "t.step seq 7 of agg-1" in lines[0]
    assert lines[1].startswith("RESUMED after") and "payments" in lines[1]


async def test_an_error_while_a_probe_fails_waits_for_it_then_succeeds_with_fake_probes() -> None:
    redis = FakeProbe(up=False, up_after=6)  # answers again from its 6th probe
    handler = Handler([ValueError(f"boom {i}") for i in range(6)])  # twice handler_attempts
    run, metrics = runner(handler, probes={"redis": redis, "postgres": FakeProbe()})

    assert await run.run(envelope()) is None

    assert len(handler.attempts) == 7
    assert outage_retries(metrics, "redis") == 5  # failures 1-5: redis down, a wait each
    assert handler_retries(metrics) == 1  # failure 6: redis up, an attempt used
    assert outage_retries(metrics, "postgres") == 0
    assert sample(metrics, "seqguard_paused") == 0


async def test_the_runners_own_timeout_while_a_probe_fails_waits_with_fake_probes() -> None:
    """A handler past its timeout while Redis hangs: the timeout is the outage's, not the event's."""
    handler = Handler([], sleeps=[1.0] * 4)  # the first 4 tries hang, the 5th is quick
    run, metrics = runner(handler, probes={"redis": FakeProbe(up=False, up_after=4)}, timeout=0.05)

    assert await run.run(envelope()) is None

    assert handler.attempts == [1, 2, 3, 4, 5]
    assert outage_retries(metrics, "redis") == 3  # timeouts 1-3: redis down, a wait each
    assert handler_retries(metrics) == 1  # timeout 4: redis answers again, an attempt used


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (TimeoutError("read timed out"), "network"),  # a dependency's own timeout, not the runner's
        (ConnectionResetError("peer reset"), "network"),
        (rx.ConnectionError("Error 111 connecting to redis:6379"), "redis"),
        (rx.TimeoutError("Timeout reading from redis"), "redis"),
    ],
    ids=["TimeoutError", "ConnectionResetError", "redis.ConnectionError", "redis.TimeoutError"],
)
async def test_a_dependency_failure_inside_the_handler_is_an_outage(error: Exception, dependency: str) -> None:
    probe = FakeProbe()  # healthy: it need not be asked, the error's type says outage
    handler = Handler([error, error, error, error])
    run, metrics = runner(handler, probes={"redis": probe})

    assert await run.run(envelope()) is None

    assert handler.attempts == [1, 2, 3, 4, 5]
    assert outage_retries(metrics, dependency) == 4
    assert handler_retries(metrics) == 0
    assert probe.calls == 0


# --- business failures dead-letter ----------------------------------------------------


async def test_an_error_while_probes_answer_uses_up_the_attempts_with_fake_probes() -> None:
    probe = FakeProbe()
    handler = Handler([ValueError("bad 1"), ValueError("bad 2"), ValueError("bad 3")])
    run, metrics = runner(handler, probes={"redis": probe})

    failure = await run.run(envelope())

    assert failure == HandlerFailure(HANDLER_EXCEPTION, "ValueError: bad 3", 3)
    assert handler.attempts == [1, 2, 3]
    assert handler_retries(metrics) == 2
    assert probe.calls == 3  # asked after each failure
    assert outage_retries(metrics, "redis") == 0
    assert sample(metrics, "seqguard_paused") in (None, 0)


async def test_a_handler_past_its_timeout_while_probes_answer_is_timeout_exceeded() -> None:
    handler = Handler([], sleep=1.0)
    run, metrics = runner(handler, timeout=0.05)

    failure = await run.run(envelope())

    assert failure is not None
    assert (failure.error_class, failure.attempts) == (TIMEOUT_EXCEEDED, 3)
    assert failure.message == "HandlerTimeout: handler for t.step ran past 0.05 s"
    assert handler.attempts == [1, 2, 3]
    assert handler_retries(metrics) == 2


async def test_the_settings_timeout_applies_to_a_handler_without_its_own() -> None:
    handler = Handler([], sleep=1.0)
    run, _ = runner(handler, s=SETTINGS.model_copy(update={"handler_timeout": 0.05, "handler_attempts": 2}))
    failure = await run.run(envelope())
    assert failure is not None and (failure.error_class, failure.attempts) == (TIMEOUT_EXCEEDED, 2)


@pytest.mark.parametrize("redis_up", [True, False], ids=["probes-answer", "fake-probe-down"])
async def test_a_permanent_error_is_dead_lettered_at_once(redis_up: bool) -> None:
    handler = Handler([PermanentError("card declined")])
    run, metrics = runner(handler, probes={"redis": FakeProbe(redis_up)})

    failure = await run.run(envelope())

    assert failure == HandlerFailure(HANDLER_EXCEPTION, "PermanentError: card declined", 1)
    assert handler.attempts == [1]
    assert handler_retries(metrics) == 0 and outage_retries(metrics, "redis") == 0


# --- a fence stops the wait -----------------------------------------------------------


async def test_a_fence_raised_by_check_stops_the_wait_and_clears_the_pause() -> None:
    metrics = Metrics.create()
    handler = Handler([TransientError("down", "payments") for _ in range(100)], metrics=metrics)
    run, _ = runner(handler)
    checks = 0

    def check() -> None:
        nonlocal checks
        checks += 1
        if checks > 3:
            raise Fenced("partition 0 was revoked")

    with pytest.raises(Fenced, match="revoked"):
        await run.run(envelope(), check=check)

    assert checks == 4
    assert 1 <= len(handler.attempts) <= 4 and handler.failures  # it stopped waiting: not all 100 tries ran
    assert run.report.paused is None
    assert sample(metrics, "seqguard_paused") == 0
    assert outage_retries(metrics, "payments") == len(handler.attempts)


# --- regressions ------------------------------------------------------------------------


async def test_an_outage_past_1024_waits_still_waits() -> None:
    """(The 1025th wait once raised OverflowError out of run() - Backoff.delay's 2 ** tries no
    longer fit a float - and processor/batch.py set the event aside as processing_failed.)"""
    fast = SETTINGS.model_copy(update={"retry_base_delay": 0.0001, "outage_retry_max_delay": 0.0001})
    handler = Handler([TransientError("down", "payments") for _ in range(1_100)])
    run, metrics = runner(handler, s=fast)
    assert await run.run(envelope()) is None
    assert outage_retries(metrics, "payments") == 1_100
    assert handler_retries(metrics) == 0


async def test_a_transient_error_naming_no_dependency_still_waits() -> None:
    """(``dependency or down[0]`` once raised IndexError for TransientError(dependency=""):
    an outage with no dependency named, and no probe failing.)"""
    handler = Handler([TransientError("flaky", dependency="")])
    run, metrics = runner(handler)
    assert await run.run(envelope()) is None
    assert len(handler.attempts) == 2 and handler_retries(metrics) == 0
    assert outage_retries(metrics, "handler") == 1  # TransientError's own default
