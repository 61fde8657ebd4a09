"""The worker's web pages: /metrics, /healthz and /tables (Faust's web server)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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
        """200 once table recovery has completed and the worker processes events; 503 while its
        tables recover (the sweep and gap clocks are paused then too). ``paused`` tells which
        dependency an event waits for, since when (still 200: restarting would not help)."""
        recovering = not app.tables.recovery.completed.is_set() or bool(app.in_recovery)  # type: ignore[attr-defined]
        body = {
            "ready": not recovering,
            "recovering": recovering,
            "rebalancing": bool(app.rebalancing),
            "paused": processor.runner.report.paused,
            "worker": worker,
        }
        return web.json(body, status=503 if recovering else 200)

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
