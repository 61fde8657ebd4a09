"""Makes a pause on an outage visible: metrics, log lines and the /healthz detail.

The worker is paused while an event waits for a dependency (workers/processor/runner.py):
it logs when the pause begins, every LOG_EVERY seconds while it lasts, and when it ends.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from workers.envelope import Envelope

log = logging.getLogger(__name__)

LOG_EVERY = 30.0


class OutageReport:
    def __init__(self, metrics: Any, clock: Any = time.time) -> None:
        self.metrics = metrics
        self.clock = clock
        #: What /healthz shows while paused; None when not.
        self.paused: dict[str, Any] | None = None
        self._logged = 0.0
        self._down: set[str] = set()

    def waiting(self, dependency: str, error: BaseException, env: Envelope, delay: float) -> None:
        now = self.clock()
        m = self.metrics
        m.outage_retries.labels(dependency).inc()
        if dependency not in self._down:
            self._down.add(dependency)
            m.outages.labels(dependency).inc()
            m.dependency_up.labels(dependency).set(0)
        what = f"{env.type} seq {env.sequence} of {env.aggregate_id}"
        if self.paused is None:
            self.paused = {"since": now, "dependency": dependency, "event": what}
            m.paused.set(1)
            self._logged = now
            log.warning(
                "PAUSED: %s is unavailable (%s: %s); %s waits, nothing after it is committed; retrying in %.1f s",
                dependency,
                type(error).__name__,
                error,
                what,
                delay,
            )
        elif now - self._logged >= LOG_EVERY:
            self._logged = now
            log.warning(
                "still PAUSED after %.0f s: %s is unavailable (%s)", now - self.paused["since"], dependency, error
            )
        self.paused.update(
            dependency=dependency,
            error=f"{type(error).__name__}: {error}"[:300],
            retries=self.paused.get("retries", 0) + 1,
        )

    def resumed(self) -> None:
        """The waiting event went through (or was dead-lettered for its own reasons)."""
        if self.paused is not None:
            log.warning(
                "RESUMED after %.1f s: %s answers again",
                self.clock() - self.paused["since"],
                ", ".join(sorted(self._down)),
            )
        self._clear()
        for dependency in self._down:
            self.metrics.dependency_up.labels(dependency).set(1)
        self._down.clear()

    def dropped(self) -> None:
        """The batch that waited was fenced off (a rebalance, a shutdown): it is read again."""
        self._clear()

    def _clear(self) -> None:
        self.paused = None
        self.metrics.paused.set(0)
