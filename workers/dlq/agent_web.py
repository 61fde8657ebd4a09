"""The DLQ agent's web server: /metrics, /livez, /readyz and /healthz, on SEQGUARD_WEB_PORT.

prometheus_client's own server serves metrics only, so this is a small aiohttp app (aiohttp
comes with Faust). Same page names as the worker's: /livez answers 200 while the event loop
runs (a failing pass included: a restart would not bring Kafka back); /readyz 200 once a pass
succeeded and while the last one did, 503 with the reasons otherwise; /healthz is /readyz.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from workers import logs
from workers.errors import StartupError
from workers.settings import Settings

if TYPE_CHECKING:
    from workers.dlq.agent import Agent


def make_app(agent: Agent, name: str) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(agent.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"live": True, "agent": name, "pid": os.getpid()})

    async def readyz(request: web.Request) -> web.Response:
        reasons = agent.not_ready()
        body = {"ready": not reasons, "reasons": reasons, "passes": agent.passes, "agent": name}
        return web.json_response(body, status=503 if reasons else 200)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", readyz)
    return app


async def serve(settings: Settings, agent: Agent) -> web.AppRunner:
    """Start serving on SEQGUARD_WEB_HOST:SEQGUARD_WEB_PORT; ``cleanup()`` the runner to stop."""
    runner = web.AppRunner(make_app(agent, logs.worker_name(settings)), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    except OSError as exc:  # the port is taken: one line and exit 2, as the worker's start-up errors
        await runner.cleanup()
        where = f"{settings.web_host}:{settings.web_port}"
        raise StartupError(f"cannot serve the DLQ agent's pages on {where}: {exc}") from exc
    return runner
