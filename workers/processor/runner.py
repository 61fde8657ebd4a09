"""Run one event's handler: its data prepared, retried with backoff, bounded in time.

A failure is a business failure or an outage (tables.outage, workers/dependencies.py). A
business failure uses up the handler's attempts, then the event is dead-lettered. An outage
keeps the event where it is: it is retried with backoff until its dependency answers again,
without using up attempts, while the batch holds the processor's lock, so no later event of
any aggregate of this worker runs ahead of it and nothing after it is committed. The wait
asks ``check`` between retries: a rebalance or a shutdown drops the batch (Fenced), unwritten.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tables.outage import Backoff, Fault, Next, after_failure
from workers.context import Context, Resources
from workers.dependencies import Dependencies, classify
from workers.envelope import Envelope
from workers.errors import HANDLER_EXCEPTION, HandlerTimeout, SeqguardError
from workers.handlers import HandlerSpec, Registry
from workers.metrics import Metrics
from workers.processor.outage import OutageReport
from workers.settings import Settings

Headers = Sequence[tuple[str, bytes | None]]
#: How often a wait asks whether the batch may go on (a rebalance waits for it).
CHECK_EVERY = 0.1


@dataclass(slots=True)
class HandlerFailure:
    error_class: str
    message: str
    attempts: int


def _never() -> None:
    return None


class HandlerRunner:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        resources: Resources | None,
        metrics: Metrics,
        dependencies: Dependencies | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.resources = resources
        self.metrics = metrics
        metrics.types.update(registry.specs)  # handled types get their own label value
        self.dependencies = dependencies
        self.report = OutageReport(metrics)
        self.retry = Backoff(settings.retry_base_delay, settings.retry_max_delay)
        self.outage = Backoff(settings.retry_base_delay or 0.1, settings.outage_retry_max_delay)

    def handles(self, event_type: str) -> bool:
        return event_type in self.registry.specs

    async def run(
        self, env: Envelope, *, headers: Headers = (), check: Callable[[], None] = _never
    ) -> HandlerFailure | None:
        """None if the handler succeeded (or the type has none); else why it failed for good."""
        spec = self.registry.get(env.type)
        if spec is None:
            return None  # no handler: seqguard only orders and deduplicates this type
        try:
            data = spec.prepare(env)
        except SeqguardError as exc:
            return HandlerFailure(exc.error_class, str(exc), 0)
        attempt, waits = 1, 0
        try:
            while True:
                error = await self._attempt(spec, env, data, attempt + waits, headers)  # the try's number
                if error is None:
                    return None
                fault, dependency = classify(error)
                down = await self.dependencies.down() if fault is Fault.ERROR and self.dependencies else []
                step = after_failure(
                    fault,
                    attempt,
                    self.settings.handler_attempts,
                    dependency_down=bool(down),
                    waits=waits + 1,
                    retry=self.retry,
                    outage=self.outage,
                )
                if step.next is Next.DEAD_LETTER:
                    return _failure(error, attempt)
                delay = step.delay
                if step.next is Next.WAIT:
                    waits += 1
                    delay = min(delay, getattr(error, "retry_after", delay))
                    self.report.waiting(dependency or (down[0] if down else "handler"), error, env, delay)
                else:
                    attempt += 1
                    self.metrics.handler_retries.labels(self.metrics.type_label(env.type)).inc()
                await _wait(delay, check)
        except BaseException:
            if waits:
                self.report.dropped()
            raise
        finally:
            if waits and self.report.paused is not None:
                self.report.resumed()

    async def _attempt(
        self, spec: HandlerSpec, env: Envelope, data: object, attempt: int, headers: Headers
    ) -> BaseException | None:
        timeout = spec.timeout or self.settings.handler_timeout
        started = time.perf_counter()
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                await spec.fn(env, data, Context(self.resources, attempt, env, headers))
        except TimeoutError as exc:
            # Ours, or a dependency's own timeout raised inside the handler (an outage).
            return HandlerTimeout(f"handler for {env.type} ran past {timeout} s") if limit.expired() else exc
        except Exception as exc:  # noqa: BLE001 - a handler's bug is dead-lettered, never escapes
            return exc
        self.metrics.handler_seconds.labels(self.metrics.type_label(env.type)).observe(time.perf_counter() - started)
        return None


def _failure(error: BaseException, attempts: int) -> HandlerFailure:
    error_class = error.error_class if isinstance(error, SeqguardError) else HANDLER_EXCEPTION
    return HandlerFailure(error_class, f"{type(error).__name__}: {error}", attempts)


async def _wait(delay: float, check: Callable[[], None]) -> None:
    """Sleep ``delay`` seconds, asking ``check`` (which raises to stop) every CHECK_EVERY."""
    deadline = time.monotonic() + delay
    while True:
        check()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(CHECK_EVERY, left))
