"""The worker's web pages: /metrics, /livez, /readyz, /healthz and /tables (Faust's web server).

/livez: the process and its event loop answer (200 also while recovering or paused on an
outage: a restart would not help). /readyz: assigned, tables recovered, the broker confirming
the group membership (503 with the reasons otherwise). /healthz: the compatibility page, 503
only while tables recover, as before /readyz existed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tables.health import WorkerFacts, worker_not_ready
from workers.kafka.lease import lease_left
from workers.processor.store import state_view
from workers.web_page import install_operator_page

if TYPE_CHECKING:
    from workers.app import Runtime


def install_pages(app: Any, runtime: Runtime, table: Any) -> None:
    settings, processor = runtime.settings, runtime.processor
    assert processor is not None
    worker = runtime.worker_id
    install_operator_page(app, runtime)  # / and /ui: the operator page (workers/web_page.py)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(runtime.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def health_view(web: Any, request: Any) -> Any:
        """Kept for compatibility (use /livez and /readyz): 200 once table recovery has completed;
        503 while its tables recover (the sweep and gap clocks are paused then too). ``paused``
        tells which dependency an event waits for, since when (still 200: restarting would not help)."""
        recovering = not app.tables.recovery.completed.is_set() or bool(app.in_recovery)  # type: ignore[attr-defined]
        body = {
            "ready": not recovering,
            "recovering": recovering,
            "rebalancing": bool(app.rebalancing),
            "paused": processor.runner.report.paused,
            "worker": worker,
        }
        return web.json(body, status=503 if recovering else 200)

    install_probes(app, runtime)  # /livez and /readyz

    @app.page("/tables")
    async def tables_view(web: Any, request: Any) -> Any:
        """Every table's content (SEQGUARD_STATE_DUMP=true only: it can be large)."""
        if not settings.state_dump:
            return web.json({"error": "set SEQGUARD_STATE_DUMP=true to enable"}, status=404)
        async with processor.lock:  # between batches: a consistent picture
            dump = {table.name: {k.decode("latin-1"): state_view(v) for k, v in table.data.items()}}
        return web.json(dump)

    from workers.web_aggregates import install_aggregate_pages

    install_aggregate_pages(app, runtime, table)  # /aggregates/{id} and /gaps


# --- liveness and readiness (issue 11) ---
def install_probes(app: Any, runtime: Runtime) -> None:
    """/livez and /readyz: restart on the first, route, gate rollouts and page on the second."""
    settings, processor = runtime.settings, runtime.processor
    assert processor is not None
    worker = runtime.worker_id

    @app.page("/livez")
    async def live_view(web: Any, request: Any) -> Any:
        """200 whenever the event loop answers: recovering, rebalancing or paused included."""
        return web.json({"live": True, "worker": worker, "pid": os.getpid()})

    @app.page("/readyz")
    async def ready_view(web: Any, request: Any) -> Any:
        """200 when the worker's answers are complete: 503 with ``reasons`` otherwise."""
        facts = WorkerFacts(
            membership_left=lease_left(app.consumer, settings.session_timeout, settings.heartbeat_interval),
            rebalancing=bool(app.rebalancing),
            recovered=app.tables.recovery.completed.is_set() and not app.in_recovery,  # type: ignore[attr-defined]
        )
        reasons = worker_not_ready(facts)
        sources = {settings.input_topic, settings.repartition_topic}
        body = {
            "ready": not reasons,
            "reasons": reasons,
            "partitions": sorted({tp.partition for tp in app.assignor.assigned_actives() if tp.topic in sources}),
            "paused": processor.runner.report.paused,  # an outage: still ready (restarting would not help)
            "worker": worker,
        }
        return web.json(body, status=503 if reasons else 200)


# --- end of liveness and readiness ---
