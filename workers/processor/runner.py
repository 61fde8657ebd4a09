"""Run one event's handler: its data prepared, retried with backoff, bounded in time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from workers.envelope import Envelope
from workers.errors import HANDLER_EXCEPTION, HandlerTimeout, SeqguardError
from workers.handlers import Context, Registry
from workers.metrics import Metrics
from workers.settings import Settings


@dataclass(slots=True)
class HandlerFailure:
    error_class: str
    message: str
    attempts: int


class HandlerRunner:
    def __init__(self, settings: Settings, registry: Registry, effects: Any, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.effects = effects
        self.metrics = metrics

    async def run(self, env: Envelope) -> HandlerFailure | None:
        """None if the handler succeeded (or the type has none); else why it failed for good."""
        spec = self.registry.get(env.type)
        if spec is None:
            return None  # no handler: seqguard only orders and deduplicates this type
        try:
            data = spec.prepare(env)
        except SeqguardError as exc:
            return HandlerFailure(exc.error_class, str(exc), 0)
        s = self.settings
        timeout = spec.timeout or s.handler_timeout
        error: BaseException | None = None
        for attempt in range(1, s.handler_attempts + 1):
            started = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    await spec.fn(env, data, Context(self.effects, attempt))
            except SeqguardError as exc:
                if exc.permanent:
                    return HandlerFailure(exc.error_class, f"{type(exc).__name__}: {exc}", attempt)
                error = exc
            except TimeoutError:
                error = HandlerTimeout(f"handler for {env.type} ran past {timeout} s")
            except Exception as exc:  # noqa: BLE001 - a handler's bug is dead-lettered, never escapes
                error = exc
            else:
                self.metrics.handler_seconds.labels(env.type).observe(time.perf_counter() - started)
                return None
            if attempt < s.handler_attempts:
                self.metrics.handler_retries.labels(env.type).inc()
                await asyncio.sleep(min(s.retry_max_delay, s.retry_base_delay * 2 ** (attempt - 1)))
        error_class = error.error_class if isinstance(error, SeqguardError) else HANDLER_EXCEPTION
        return HandlerFailure(error_class, f"{type(error).__name__}: {error}", s.handler_attempts)
