"""The operator page at ``/`` and ``/ui``: what this worker owns, what waits, how to resolve it.

Read-only (GET) and server-rendered (``workers/web_page_template.py``), no script. What it
shows comes from three places, none of which may make the page hang:

* the partitions and the parked or gapped aggregates: the worker's memory
  (``workers/inspect.held_views``), not while its tables recover (the held index is rebuilt
  from the table then, and a half-restored table would give a wrong one);
* the last gap and operator records: the audit topic's tail (``workers/audit.py``), read at
  most every AUDIT_EVERY seconds;
* DLQ records waiting, by error class: the worker does not track them, so the page reads the
  DLQ as the DLQ agent does (``load_plan``), at most every DLQ_EVERY seconds. That read decodes
  every DLQ record, so it runs in a thread of its own: the worker's event loop (heartbeats,
  batches) never waits for it.

Both Kafka reads run only while someone looks at the page: a request starts a read if the
last one is old enough, waits for it at most WAIT seconds, and otherwise shows the last value
with its age (or "unknown" and why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from workers.audit import AuditEntry, Query, read_audit
from workers.dlq.replay import Filters, load_plan
from workers.inspect import held_views
from workers.kafka import clients
from workers.settings import Settings
from workers.web_page_template import HEADERS, PageData, Reading, page

if TYPE_CHECKING:
    from workers.app import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

AUDIT_ROWS = 20
AUDIT_EVERY = 5.0
AUDIT_TIMEOUT = 10.0
DLQ_EVERY = 30.0
DLQ_TIMEOUT = 60.0
#: The longest a request waits for a read it started.
WAIT = 2.0


def one_line(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer from Kafka within {timeout:g} s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


class Background(Generic[T]):
    """A value read at most every ``every`` seconds, and only when asked for."""

    def __init__(self, read: Callable[[], Awaitable[T]], every: float, timeout: float) -> None:
        self._read, self.every, self.timeout = read, every, timeout
        self._value: T | None = None
        self._at: float | None = None
        self._error: str | None = None
        self._started: float | None = None  # monotonic time of the last read's start
        self._task: asyncio.Future[None] | None = None

    def reading(self) -> Reading[T]:
        return Reading(self._value, self._at, self._error, self._task is not None)

    async def get(self, wait: float) -> Reading[T]:
        """The last value; a new read is started if the last began ``every`` s ago (failed or
        not: a Kafka that is down is not asked more often), and awaited for ``wait`` s at most."""
        now = time.monotonic()
        if self._task is None and (self._started is None or now - self._started >= self.every):
            self._started = now
            self._task = asyncio.ensure_future(self._refresh())
        if self._task is not None and wait > 0:
            await asyncio.wait({self._task}, timeout=wait)  # never cancels the read
        return self.reading()

    async def _refresh(self) -> None:
        try:
            value = await asyncio.wait_for(self._read(), self.timeout)
        except Exception as exc:  # noqa: BLE001 - shown on the page; tried again on a later view
            self._error = one_line(exc, self.timeout)
        else:
            self._value, self._at, self._error = value, time.time(), None
        finally:
            self._task = None

    async def close(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def in_thread(make: Callable[[], Awaitable[T]], limit: float) -> T:
    """Run ``make()`` on an event loop of its own in a daemon thread (ended after ``limit`` s;
    a shutdown never waits for it)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return  # the caller gave up
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = asyncio.run(asyncio.wait_for(make(), limit))  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
            error = exc
        with contextlib.suppress(RuntimeError):  # the worker's loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="seqguard-page-dlq", daemon=True).start()
    return await done


async def dlq_waiting(settings: Settings) -> dict[str, tuple[int, int]]:
    """Error class -> (records waiting, of which over the replay limit), as the DLQ agent counts."""
    plan = await load_plan(settings, Filters())
    over = Counter(letter.error_class for letter in plan.over_limit)
    waiting = Counter(letter.error_class for letter in plan.replay) + over
    return {error_class: (n, over[error_class]) for error_class, n in waiting.items()}


class OperatorPage:
    def __init__(self, app: Any, runtime: Runtime) -> None:
        self.app, self.runtime, self.settings = app, runtime, runtime.settings
        settings = self.settings

        async def audit_tail() -> list[AuditEntry]:
            query = Query(limit=AUDIT_ROWS)
            return await read_audit(clients.kafka(settings), settings.audit_topic, query, max_wait=AUDIT_TIMEOUT)

        self.audit = Background(audit_tail, AUDIT_EVERY, AUDIT_TIMEOUT)
        self.dlq = Background(lambda: in_thread(lambda: dlq_waiting(settings), DLQ_TIMEOUT), DLQ_EVERY, DLQ_TIMEOUT)

    def state(self) -> str:
        app = self.app
        if not app.tables.recovery.completed.is_set() or app.in_recovery:
            return "recovering tables"
        return "rebalancing" if app.rebalancing else "ready"

    def owned(self) -> tuple[list[int], list[int]]:
        """Input partitions this worker owns, and the state partitions it keeps standby copies of."""
        s = self.settings
        sources = (s.input_topic, s.repartition_topic)
        assignor = self.app.assignor
        active = {tp.partition for tp in assignor.assigned_actives() if tp.topic in sources}
        standby = {tp.partition for tp in assignor.assigned_standbys() if tp.topic == s.changelog_topic("state")}
        return sorted(active), sorted(standby)

    async def data(self) -> PageData:
        audit, dlq = await asyncio.gather(self.audit.get(WAIT), self.dlq.get(WAIT))
        processor = self.runtime.processor
        assert processor is not None
        now = time.time()
        state = self.state()
        active, standby = self.owned()
        held = None
        note: str | None = f"not shown while the worker is {state}: its tables are being rebuilt"
        if state == "ready":  # between awaits: one consistent picture of the table's memory
            try:
                held, note = held_views(processor.store, active, now), None
            except Exception as exc:  # noqa: BLE001 - the page shows why, the worker goes on
                log.warning("operator page: listing held aggregates failed", exc_info=True)
                note = f"could not list them: {one_line(exc, 0)}"
        s = self.settings
        return PageData(
            worker=self.runtime.worker_id,
            app_id=s.app_id,
            input_topic=s.input_topic,
            dlq_topic=s.dlq,
            audit_topic=s.audit_topic,
            now=now,
            state=state,
            paused=processor.runner.report.paused,
            partitions=active,
            standbys=standby,
            held=held,
            held_note=note,
            dlq=dlq,
            audit=audit,
        )

    async def close(self) -> None:
        await asyncio.gather(self.audit.close(), self.dlq.close())


def install_operator_page(app: Any, runtime: Runtime) -> OperatorPage:
    operator_page = OperatorPage(app, runtime)

    async def respond(web: Any) -> Any:
        body = page(await operator_page.data())
        return web.html(str(body), content_type="text/html", headers=dict(HEADERS))  # aiohttp adds charset=utf-8

    @app.page("/")
    async def operator_index(web: Any, request: Any) -> Any:
        return await respond(web)

    @app.page("/ui")
    async def operator_ui(web: Any, request: Any) -> Any:
        return await respond(web)

    @app.on_before_shutdown.connect  # type: ignore[misc]
    async def stop_page_reads(app: Any, **_: Any) -> None:
        await operator_page.close()

    return operator_page
