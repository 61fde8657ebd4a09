"""The Faust app: tables, the ordered agent, the sweep timer and the web views.

The agent subscribes to raw bytes and takes events in batches: seqguard decodes them
itself (Faust would ack a record that fails its own decoding), catches every error
inside the batch (Faust acks an event whose agent raises), and runs one ordered consumer
per partition (concurrency=1: more would break order and race on the tables).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from tables.reorder import reorder_table
from tables.seen import seen_table
from tables.sequence import sequence_table
from workers import batch_delivery, faust_patches
from workers.effects import Effects
from workers.handlers import load_domains
from workers.metrics import Metrics
from workers.ordered import OrderedProcessor
from workers.policy_file import policy_book
from workers.records import InRecord
from workers.settings import Settings
from workers.sink import Sink
from workers.state_store import TableStore

log = logging.getLogger(__name__)

EXIT_CRITICAL = 70  # os.EX_SOFTWARE: the supervisor restarts the worker


class QuietWorker(faust.Worker):
    """Faust's worker without its terminal spinner.

    At log levels of WARNING and above the spinner sets the root logger to DEBUG so it can
    spin on every record; aiokafka then builds a debug record for each message it sends
    (measured: ~15% of the worker's CPU). Containers have no terminal to spin in anyway.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


@dataclass
class Runtime:
    """Everything a running worker holds, for the CLI and the tests."""

    app: faust.App
    settings: Settings
    metrics: Metrics
    processor: OrderedProcessor | None = None


def faust_settings(settings: Settings) -> dict[str, Any]:
    return {
        "broker": settings.broker_url,
        "store": "memory://",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": settings.create_topics,
        "broker_session_timeout": settings.session_timeout,
        "broker_heartbeat_interval": settings.heartbeat_interval,
        "broker_rebalance_timeout": settings.rebalance_timeout,
        "broker_request_timeout": max(90.0, settings.session_timeout * 2),
        "broker_commit_interval": settings.commit_interval,
        "producer_linger": settings.producer_linger_ms / 1000.0,
        "producer_acks": -1,
        "table_standby_replicas": settings.standby_replicas,
        "consumer_auto_offset_reset": "earliest",
        "web_enabled": settings.web_port > 0,
        "web_port": settings.web_port or 6066,
        "web_bind": settings.web_host,
        "datadir": str(settings.data_dir),
        "stream_wait_empty": False,
        "logging_config": None,
    }


def worker_id(settings: Settings) -> str:
    return settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"


def create_app(settings: Settings, metrics: Metrics | None = None) -> Runtime:
    faust_patches.install()
    app = faust.App(settings.app_id, **faust_settings(settings))
    app.seqguard_fetch_max_wait_ms = settings.fetch_max_wait_ms  # type: ignore[attr-defined]
    if settings.probe_changelog_ends:
        app.seqguard_bootstrap = settings.bootstrap_servers  # type: ignore[attr-defined]
    runtime = Runtime(app, settings, metrics or Metrics.create())
    n = settings.partitions
    tables = (sequence_table(app, "sequence", n), seen_table(app, "seen", n), reorder_table(app, "reorder", n))
    channel = app.topic(
        settings.input_topic,
        settings.repartition_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=n,
    )

    redis = Redis.from_url(settings.redis_url.get_secret_value())  # connects on first use
    changelogs = frozenset(t.changelog_topic.get_topic_name() for t in tables)
    sink = Sink(lambda: _producer(settings), state_topics=changelogs)
    runtime.processor = OrderedProcessor(
        settings,
        TableStore(*tables, sink=sink, max_record_bytes=settings.max_state_record_bytes),
        sink,
        load_domains(settings.domains),
        Effects(redis, prefix=settings.redis_prefix),
        runtime.metrics,
        policy_book(settings),
        worker_id(settings),
    )
    processor = runtime.processor

    @app.on_before_shutdown.connect  # type: ignore[misc,arg-type]
    async def stop_sink(app: faust.App, **_: Any) -> None:
        # After the consumer stopped: every batch acknowledged has been flushed already.
        await sink.stop()
        await redis.aclose()

    async def deliver(records: list[InRecord]) -> None:
        # Records taken before a rebalance may belong to partitions revoked since: another
        # worker owns their state now, and Faust discards commits for them, so they are
        # left to their new owner rather than written to its changelogs from here.
        assigned = app.consumer.assignment()
        kept = [r for r in records if (r.topic, r.partition) in assigned]
        if len(kept) < len(records):
            log.info("left %d records of revoked partitions to their new owner", len(records) - len(kept))
        if kept:
            await _run_batch(processor, kept)

    if settings.batch_delivery:
        batch_delivery.install()
        app.seqguard_delivery = batch_delivery.Delivery(  # type: ignore[attr-defined]
            frozenset({settings.input_topic, settings.repartition_topic}), deliver, settings.batch_max
        )

    @app.agent(channel, name="ordered", concurrency=1)
    async def ordered(stream: Any) -> None:
        """The ordered topics' subscriber. With batch delivery (the default) their records reach
        ``deliver`` straight from the fetch, and this stream stays empty."""
        async for events in stream.take_events(settings.batch_max, settings.batch_within):
            await deliver([InRecord.from_message(e.message) for e in events])

    @app.on_partitions_revoked.connect  # type: ignore[misc,arg-type]
    async def finish_batch_before_revocation(app: faust.App, revoked: set[Any], **_: Any) -> None:
        # The rebalance waits for this: no batch is still writing the revoked partitions'
        # changelogs when their new owner starts restoring them.
        async with processor.lock:
            pass

    @app.timer(settings.gap_check_interval)
    async def sweep() -> None:
        active = _active_partitions(app, settings)
        try:
            await processor.sweep(active)
        except Exception:
            log.critical("sweep failed; stopping the worker without acknowledging anything", exc_info=True)
            os._exit(EXIT_CRITICAL)
        _update_lag(app, runtime.metrics)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(runtime.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/healthz")
    async def health_view(web: Any, request: Any) -> Any:
        """200 once table recovery has completed and the worker processes events."""
        ready = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        return web.json({"ready": ready, "worker": worker_id(settings)}, status=200 if ready else 503)

    @app.page("/tables")
    async def tables_view(web: Any, request: Any) -> Any:
        """Every table's content (SEQGUARD_STATE_DUMP=true only: it can be large)."""
        if not settings.state_dump:
            return web.json({"error": "set SEQGUARD_STATE_DUMP=true to enable"}, status=404)
        async with processor.lock:  # between batches: a consistent picture
            dump = {t.name: {k.decode("latin-1"): v for k, v in t.data.items()} for t in tables}
        return web.json(dump)

    return runtime


def _producer(settings: Settings) -> AIOKafkaProducer:
    """seqguard's own producer: acks from all in-sync replicas, large batches, a short linger."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=f"{settings.app_id}-sink",
        acks="all",
        linger_ms=settings.producer_linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )


async def _run_batch(processor: OrderedProcessor, records: list[InRecord]) -> None:
    """Process one batch to the end, whatever happens around it.

    Faust acks the batch as soon as this returns or raises, so: an error stops the
    process before the ack (nothing is committed), and a cancellation (shutdown,
    rebalance) waits for the batch to finish so the ack is true.
    """
    task = asyncio.ensure_future(processor.process_batch(records))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
    except BaseException:
        log.critical("batch failed; stopping the worker without acknowledging it", exc_info=True)
        os._exit(EXIT_CRITICAL)


def _active_partitions(app: faust.App, settings: Settings) -> set[int]:
    topics = {settings.input_topic, settings.repartition_topic}
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic in topics}


def _update_lag(app: faust.App, metrics: Metrics) -> None:
    """Lag from the fetch high-water mark (end_offsets is wrong on the embedded broker)."""
    consumer = app.consumer
    for tp in consumer.assignment():
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - no fetch yet for this partition
            continue
        position = consumer._read_offset.get(tp)  # type: ignore[attr-defined]
        if highwater is not None and position is not None:
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position - 1))
