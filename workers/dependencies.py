"""Which failures are outages of a dependency, and which dependencies answer now.

A failure is an outage when its type says so (a TransientError a handler raises, Redis or
PostgreSQL unreachable), or when a dependency stops answering its probe right after a
handler failed with anything else (a handler timeout while Redis hangs, say). Outages
make the event wait (tables.outage); other failures use up attempts and dead-letter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tables.outage import Fault
from workers.errors import SeqguardError
from workers.ledger.redis import is_redis_outage
from workers.settings import Settings

Probe = Callable[[], Awaitable[object]]


def classify(exc: BaseException) -> tuple[Fault, str]:
    """(fault, dependency) of a handler's failure; dependency is "" unless it is an outage."""
    if isinstance(exc, SeqguardError):
        if exc.permanent:
            return Fault.PERMANENT, ""
        if exc.outage:
            return Fault.OUTAGE, str(getattr(exc, "dependency", "handler"))
        return Fault.ERROR, ""
    if is_redis_outage(exc):
        return Fault.OUTAGE, "redis" if type(exc).__module__.startswith("redis") else "network"
    return Fault.ERROR, ""


class Dependencies:
    def __init__(self, probes: dict[str, Probe], timeout: float) -> None:
        self.probes = probes
        self.timeout = timeout

    async def _answers(self, probe: Probe) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                return await probe() is not False
        except Exception:  # noqa: BLE001 - any failure to answer is "down"
            return False

    async def down(self) -> list[str]:
        """The dependencies that do not answer their probe now (all probed at once)."""
        names = list(self.probes)
        answers = await asyncio.gather(*(self._answers(self.probes[n]) for n in names))
        return [n for n, ok in zip(names, answers, strict=True) if not ok]


def redis_client(settings: Settings) -> Redis:
    """Redis with bounded waits: a refused connection or a hung server fails a command within
    the connect/socket timeouts (after a few quick retries), and becomes an outage."""
    return Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_connect_timeout=settings.redis_connect_timeout,
        socket_timeout=settings.redis_socket_timeout,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), settings.redis_retries),
        health_check_interval=settings.redis_health_check_interval,
        **settings.redis_ssl_options,  # rediss:// with a private CA
    )
