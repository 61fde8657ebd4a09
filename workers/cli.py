"""The ``seqguard`` command: worker, demo, config, policies, dlq, aggregates."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import click

from workers.errors import StartupError
from workers.settings import Settings, SettingsError, explain, load_settings

log = logging.getLogger("seqguard")


class _Seqguard(click.Group):
    """Every command: bad settings or an unreachable dependency are one line on stderr and exit 2."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError

        try:
            return super().invoke(ctx)
        except (SettingsError, StartupError) as exc:
            click.echo(f"seqguard: {exc}", err=True)
            sys.exit(2)
        except ValidationError as exc:  # a direct Settings() (not load_settings): still one line
            if exc.title != Settings.__name__:
                raise
            click.echo(f"seqguard: {'; '.join(explain(exc))}", err=True)
            sys.exit(2)


@click.group(cls=_Seqguard)
@click.version_option(package_name="seqguard", prog_name="seqguard", message="%(prog)s %(version)s")
def main() -> None:
    """seqguard: ordered, once-only processing of Kafka event streams per aggregate."""


async def reach_kafka(settings: Settings) -> None:
    """One metadata request to the bootstrap servers within startup_timeout, or StartupError naming them."""
    from aiokafka.errors import KafkaError

    from workers.kafka.clients import admin as kafka_admin  # the cluster's TLS/SASL options

    timeout = settings.startup_timeout
    try:
        admin = kafka_admin(settings, request_timeout_ms=int(timeout * 1000))
    except (OSError, ValueError) as exc:  # a certificate or key that cannot be loaded
        raise StartupError(f"cannot set up a Kafka client for {settings.bootstrap_servers}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout):  # one deadline for connecting and the answer
            await admin.start()
            await admin.describe_cluster()
    except TimeoutError as exc:
        raise StartupError(f"cannot reach Kafka at {settings.bootstrap_servers}: no answer in {timeout:g}s") from exc
    except (OSError, KafkaError) as exc:
        raise StartupError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc!r}") from exc
    finally:
        await admin.close()


class _LastWarning(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


async def check_kafka(settings: Settings) -> None:
    """Reach Kafka (and create topics), or one StartupError carrying aiokafka's own reason.

    aiokafka logs why a connection failed (refused, TLS, SASL) and raises only "unable to
    bootstrap": its lines are held back here and the last one joins the StartupError's line."""
    from workers.kafka.topics import ensure_topics

    logger, last = logging.getLogger("aiokafka"), _LastWarning()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(last)
    try:
        if settings.create_topics:
            await ensure_topics(settings)  # reaches Kafka itself: the same StartupError when it cannot
        else:
            await reach_kafka(settings)  # topics made by someone else: Kafka must still answer
    except StartupError as exc:
        raise StartupError(f"{exc} ({last.message})" if last.message else str(exc)) from exc
    finally:
        logger.removeHandler(last)
        logger.propagate = propagate


async def startup_checks(settings: Settings) -> None:
    """Reach Kafka (and create topics) and Redis, or raise StartupError."""
    from redis.asyncio import Redis

    await check_kafka(settings)
    timeout = settings.startup_timeout  # a Redis that accepts but never answers must not hang start-up either
    redis = Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        **settings.redis_ssl_options,  # rediss:// with a private CA
    )
    try:
        await redis.ping()
    except Exception as exc:
        raise StartupError(f"cannot reach Redis: {exc!r}") from exc
    finally:
        await redis.aclose()


@main.command()
@click.option("-l", "--loglevel", default=None, help="Log level (default: SEQGUARD_LOG_LEVEL).")
@click.option("--web-port", type=int, default=None, help="Web port for /metrics (default: SEQGUARD_WEB_PORT).")
def worker(loglevel: str | None, web_port: int | None) -> None:
    """Run an ordered worker (start as many as the input topic has partitions)."""
    overrides: dict[str, Any] = {}
    if web_port is not None:
        overrides["web_port"] = web_port
    settings = load_settings(**overrides)
    level = (loglevel or settings.log_level).upper()
    from workers import logs

    # Before anything logs; printed output becomes log lines too (QuietWorker keeps mode's set-up off).
    logs.configure(level, settings.log_format, worker=logs.worker_name(settings), capture_stdio=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(startup_checks(settings))
        from workers.app import QuietWorker, create_app

        runtime = create_app(settings)  # refuses Faust/aiokafka versions its patches were not written for
    except StartupError as exc:
        log.critical("start-up failed: %s", exc)
        sys.exit(2)
    from workers import gc_tuning

    gc_tuning.tune()  # after start-up: modules, Faust and the app go to the permanent generation
    QuietWorker(runtime.app, loglevel=level.lower()).execute_from_commandline()


@main.command()
@click.option("--markdown", is_flag=True, help="Print the README's table of environment variables.")
@click.option("--json", "as_json", is_flag=True, help="Print effective values as JSON.")
def config(markdown: bool, as_json: bool) -> None:
    """Print the effective settings (secrets masked), or the README table of variables."""
    from workers.settings_doc import effective, markdown_table

    if markdown:
        click.echo(markdown_table())
        return
    values = effective(load_settings())
    if as_json:
        click.echo(json.dumps(values, indent=2))
        return
    width = max(len(k) for k in values)
    for name, value in values.items():
        click.echo(f"{name:<{width}}  {value}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def policies(as_json: bool) -> None:
    """Per event type: ordering, gap policy, retries and DLQ auto-replay."""
    from workers.policies_view import policy_rows

    rows = policy_rows(load_settings())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("type", "ordering", "gap_timeout", "gap_policy", "attempts", "timeout", "handler", "auto_replay")
    table = [header] + [tuple(str(r[h]) for h in header) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@main.command()
@click.option("--aggregates", default=20, show_default=True, help="Orders and builds to simulate.")
@click.option("--seed", default=7, show_default=True)
def demo(aggregates: int, seed: int) -> None:
    """Zero-setup run: embedded broker + worker + a producer sending shuffled, duplicated scenarios."""
    from workers.demo import run_demo

    sys.exit(run_demo(aggregates=aggregates, seed=seed))


def _register_operator_commands() -> None:
    from workers.cli_audit import audit
    from workers.cli_dlq import aggregates, dlq
    from workers.cli_scan import scan

    main.add_command(dlq)
    main.add_command(aggregates)
    main.add_command(scan)
    main.add_command(audit)
    from workers.cli_broker import broker

    main.add_command(broker)  # the embedded broker on its own
    from workers.cli_inspect import COMMANDS as INSPECT_COMMANDS

    for command in INSPECT_COMMANDS:  # gaps, aggregate, verify: ask the workers
        main.add_command(command)


_register_operator_commands()

if __name__ == "__main__":
    main()
