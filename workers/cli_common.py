"""What the operator commands share: Kafka or Redis out of reach as one line, and progress.

``reach`` runs a command's coroutine and turns "cannot reach Kafka/Redis" into a StartupError,
which the ``seqguard`` group prints as one line on stderr with exit status 2 (workers/cli.py):
no traceback, and none of aiokafka's own retry lines. ``Progress`` draws a bar with rate and
ETA when stderr is a terminal, and writes one summary line when it is not (logs, CI, pipes).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

import click

from workers.errors import StartupError

T = TypeVar("T")


class _LastWarning(logging.Handler):
    """Keeps aiokafka's last warning: it logs why a connection failed, and raises only "unable to bootstrap"."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


def reach(coro: Coroutine[Any, Any, T], *, kafka: str, what: str) -> T:
    """``asyncio.run(coro)``; Kafka (at ``kafka``) or Redis out of reach while doing ``what``
    raise StartupError with one line saying so (and aiokafka's reason, when it logged one)."""
    from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    logger, last = logging.getLogger("aiokafka"), _LastWarning()
    propagate, logger.propagate = logger.propagate, False  # its retry lines: the one line below says it
    logger.addHandler(last)
    try:
        return asyncio.run(coro)
    except (KafkaTimeoutError, TimeoutError) as exc:  # before OSError: TimeoutError is one
        raise StartupError(f"Kafka at {kafka} did not answer in time ({what}): {exc}") from None
    except (KafkaConnectionError, OSError) as exc:
        reason = (last.message or str(exc)).strip().rstrip(":")  # a silent peer leaves aiokafka's reason empty
        raise StartupError(f"cannot reach Kafka at {kafka} ({what}): {reason}") from None
    except KafkaError as exc:
        raise StartupError(f"Kafka at {kafka} ({what}): {exc}") from None
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise StartupError(f"cannot reach Redis ({what}): {exc}") from None
    finally:
        logger.removeHandler(last)
        logger.propagate = propagate


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def interactive() -> bool:
    """Whether a person can answer a question (stdin) and see a bar (stderr)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


class Progress:
    """Progress of ``total`` items: a bar with rate and ETA on a terminal (stderr), else one
    summary line on stderr when done. stdout stays for the command's result (--json)."""

    def __init__(self, total: int, label: str, *, done: str = "done", unit: str = "records") -> None:
        self.total, self.label, self.verb, self.unit = total, label, done, unit
        self.done = 0
        self.started = time.monotonic()
        self.bar: Any = None
        if sys.stderr.isatty():
            self.bar = click.progressbar(
                length=total,
                label=label,
                file=sys.stderr,
                show_pos=True,
                show_percent=True,
                show_eta=False,  # click's waits a second between estimates: ours is in the rate text
                item_show_func=lambda _: self.rate_text(eta=True),
            )

    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def rate_text(self, *, eta: bool = False) -> str:
        rate = self.rate()
        text = f"{rate:,.0f} {self.unit}/s"
        if eta and rate > 0 and 0 < self.done < self.total:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.__exit__(kind, exc, tb)
            return
        elapsed = time.monotonic() - self.started
        counts = f"{self.done:,} of {self.total:,} {self.unit} {self.verb}"
        took = f"{elapsed:.2f} s" if elapsed < 60 else _duration(elapsed)
        click.echo(f"{self.label}: {counts} in {took} ({self.rate_text()})", err=True)
