"""The Faust app: tables, the ordered agent, the sweep timer and the web views.

The agent only declares the ordered topics (raw bytes): their records go from the fetch to
the processor in fenced batches (workers/kafka/delivery.py), never through Faust's stream,
which acks what it handed out whatever happened to it. seqguard decodes records itself,
catches every error inside the batch, and runs one batch at a time (order, and no races on
the table).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from tables.changelog import state_table
from tables.policy import PolicyBook
from workers import kafka, timing
from workers.context import Resources
from workers.dependencies import Dependencies, redis_client
from workers.effects import Effects
from workers.errors import ERROR_CLASSES
from workers.handlers import load_domains
from workers.kafka import clients, lease, progress
from workers.kafka.delivery import Delivery
from workers.kafka.fence import Fence, generation
from workers.kafka.sink import Sink
from workers.kafka.tables import faust_datadir, faust_store
from workers.ledger.postgres import Projections
from workers.ledger.redis import Ledger
from workers.metrics import Metrics
from workers.policy_file import policy_book
from workers.processor.batch import OrderedProcessor
from workers.processor.store import StateStore
from workers.processor.sweep import Sweeper
from workers.records import InRecord
from workers.settings import Settings
from workers.web import install_pages

log = logging.getLogger(__name__)

EXIT_CRITICAL = 70  # os.EX_SOFTWARE: the supervisor restarts the worker


class QuietWorker(faust.Worker):
    """Faust's worker, logging through workers/logs.py (configured by the CLI before it exists),
    without its terminal spinner and without printing anything.

    mode's own logging set-up (``override_logging``) would replace the root handler by a
    colour-log one and redirect stdout: it stays off. Its spinner would set the root logger to
    DEBUG so it can spin on every record; aiokafka then builds a debug record for each message
    it sends (measured: ~15% of the worker's CPU). ``say``/``carp`` lines become log records,
    and stack dumps (SIGUSR1) go to ``stderr`` as the CLI left it: log lines.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("override_logging", False)
        kwargs.setdefault("stdout", sys.stdout)  # read now: Faust's defaults are the streams at import
        kwargs.setdefault("stderr", sys.stderr)
        super().__init__(*args, **kwargs)
        self.spinner = None

    def say(self, msg: str) -> None:
        if msg.strip():
            log.info("%s", msg.strip())

    def carp(self, msg: str) -> None:
        if msg.strip():
            log.warning("%s", msg.strip())


@dataclass
class Runtime:
    """Everything a running worker holds, for the CLI and the tests."""

    app: faust.App
    settings: Settings
    metrics: Metrics
    processor: OrderedProcessor | None = None
    sweeper: Sweeper | None = None

    @property
    def worker_id(self) -> str:
        return worker_id(self.settings)


def faust_settings(settings: Settings) -> dict[str, Any]:
    return {
        "broker": settings.broker_url,
        "broker_credentials": clients.faust_credentials(settings),  # the same security as clients.py
        "store": faust_store(settings),  # SEQGUARD_STORE (workers/kafka/tables.py)
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
        "canonical_url": settings.advertised_url,  # where /aggregates redirects and `seqguard gaps` asks
        "datadir": str(faust_datadir(settings)),  # with RocksDB, one per worker
        "stream_wait_empty": False,
        "logging_config": None,
    }


def worker_id(settings: Settings) -> str:
    return settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"


def create_app(settings: Settings, metrics: Metrics | None = None) -> Runtime:
    app = faust.App(settings.app_id, **faust_settings(settings))
    runtime = Runtime(app, settings, metrics or (Metrics.create() if settings.metrics else Metrics.disabled()))
    table = state_table(app, settings.partitions)
    channel = _ordered_channel(app, settings)
    registry = load_domains(settings.domains)
    timing.check(settings, (spec.timeout for spec in registry.specs.values()))  # StartupError: exit 2
    policies = policy_book(settings)
    runtime.metrics.prime(
        [*registry.specs, *policies.by_type],
        ERROR_CLASSES,
        (settings.input_topic, settings.repartition_topic, settings.control_topic),
    )
    resources, dependencies = _resources(settings, runtime.metrics, policies, registry.schemas)
    sink = Sink(lambda: _producer(settings), state_topics=frozenset({table.changelog_topic.get_topic_name()}))
    runtime.processor = OrderedProcessor(
        settings,
        StateStore(table, sink, max_record_bytes=settings.max_state_record_bytes, cache_size=settings.state_cache),
        sink,
        registry,
        resources,
        runtime.metrics,
        policies,
        worker_id(settings),
        dependencies=dependencies,
    )
    processor = runtime.processor
    sweeper = runtime.sweeper = Sweeper(processor)

    @app.on_before_shutdown.connect  # type: ignore[misc,arg-type]
    async def stop_sink(app: faust.App, **_: Any) -> None:
        # After the consumer stopped: every batch acknowledged has been flushed already.
        await sink.stop()
        assert resources.effects is not None
        await resources.effects.redis.aclose()
        if resources.projections is not None:
            await resources.projections.close()

    projections = resources.projections
    if projections is not None:

        @app.timer(settings.postgres_prune_interval)
        async def prune_idempotency_rows() -> None:
            try:
                await projections.prune()
            except Exception as exc:  # noqa: BLE001 - pruning waits for the next round
                log.warning("pruning PostgreSQL idempotency rows failed: %r", exc)

    delivery = _deliver_ordered_topics(app, channel, settings, processor)
    _schedule_sweep(app, settings, runtime.metrics, processor, sweeper, delivery)
    _forget_moved_partitions(app, settings, runtime.metrics)
    install_pages(app, runtime, table)
    return runtime


def _ordered_channel(app: faust.App, settings: Settings) -> Any:
    return app.topic(  # one channel: Faust assigns its topics co-partitioned
        settings.input_topic,
        settings.repartition_topic,
        settings.control_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )


def _resources(
    settings: Settings, metrics: Metrics, policies: PolicyBook, schema: Sequence[str]
) -> tuple[Resources, Dependencies]:
    """Redis (effects, ledger) and PostgreSQL (projections), and their health probes."""
    redis = redis_client(settings)  # connects on first use
    owner = f"{settings.app_id}/{worker_id(settings)}/{secrets.token_hex(4)}"
    resources = Resources(
        effects=Effects(redis, settings.redis_prefix, settings.effect_ttl, settings.domain_state_ttl),
        ledger=Ledger(
            redis,
            namespace=settings.ledger_prefix,
            owner=owner,
            ttl=settings.effect_ttl,
            lease=settings.effect_lease,
            metrics=metrics,
        ),
        outage_policy=policies.ledger_outage,
        metrics=metrics,
    )
    probes: dict[str, Any] = {"redis": redis.ping}
    if settings.postgres_url is not None:
        resources.projections = Projections(
            settings.postgres_url.get_secret_value(),
            namespace=settings.ledger_prefix,
            ttl=settings.effect_ttl,
            pool_max=settings.postgres_pool_max,
            connect_timeout=settings.postgres_timeout,
            command_timeout=settings.postgres_timeout,
            schema=schema,
        )
        probes["postgres"] = resources.projections.ping
    return resources, Dependencies(probes, timeout=settings.redis_socket_timeout)


def _schedule_sweep(
    app: faust.App,
    settings: Settings,
    metrics: Metrics,
    processor: OrderedProcessor,
    sweeper: Sweeper,
    delivery: Delivery,
) -> None:
    @app.on_partitions_revoked.connect  # type: ignore[misc,arg-type]
    async def finish_batch_before_revocation(app: faust.App, revoked: set[Any], **_: Any) -> None:
        # The rebalance waits for this: no batch is still writing the revoked partitions'
        # changelogs when their new owner starts restoring them.
        async with processor.lock:
            processor.clocks.clear()  # gap clocks start unknown with every assignment

    sources = (settings.input_topic, settings.repartition_topic)
    # A seek moves positions back to records not read yet: the gap clocks start unknown again.
    delivery.on_seek.append(processor.clocks.clear)

    @app.timer(settings.gap_check_interval)
    async def sweep() -> None:
        if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return  # never on state that a recovery is rewinding
        consumer = app.consumer
        at_start = generation(consumer)
        seen = delivery.complete

        def complete_at(partition: int) -> dict[str, float | None]:
            return progress.complete_at(seen, [(topic, partition) for topic in sources], at_start, delivery.seeks)

        def fence() -> str | None:
            if app.rebalancing or generation(consumer) != at_start:
                return "a rebalance began"
            if lease.lease_left(consumer, settings.session_timeout, settings.heartbeat_interval) <= 0:
                return "the group membership lease ran out"
            return None

        if fence() is not None:
            return
        try:
            await sweeper.sweep(_active_partitions(app, settings), complete_at, fence)
        except Exception:
            log.critical("sweep failed; stopping the worker without acknowledging anything", exc_info=True)
            os._exit(EXIT_CRITICAL)
        _update_lag(app, settings, metrics)


def _forget_moved_partitions(app: faust.App, settings: Settings, metrics: Metrics) -> None:
    @app.on_partitions_assigned.connect  # type: ignore[misc,arg-type]
    async def forget_moved_partitions(app: faust.App, assigned: set[Any], **_: Any) -> None:
        # A partition's gauges belong to its owner: a value left here would keep alerts firing
        # from this worker for a partition another worker now reports.
        gone = set(range(settings.partitions)) - _active_partitions(app, settings)
        metrics.forget_partitions(gone, (settings.input_topic, settings.repartition_topic))


def _deliver_ordered_topics(app: faust.App, channel: Any, settings: Settings, processor: OrderedProcessor) -> Delivery:
    """Install the Kafka hooks: the ordered topics' records go from the fetch to ``processor``
    in fenced batches. The agent only declares the topics so that Faust subscribes them."""

    async def deliver(records: list[InRecord], fence: Fence) -> list[InRecord]:
        # The delivery fenced off records of revoked partitions; the batch processes every
        # record it is given (or none, if its fence closed), or stops the process.
        return records if await _run_batch(processor, records, fence) else []

    def lease_left(consumer: Any) -> float:
        return lease.lease_left(consumer, settings.session_timeout, settings.heartbeat_interval)

    delivery = Delivery(
        frozenset({settings.input_topic, settings.repartition_topic, settings.control_topic}),
        deliver,
        settings.batch_max,
        lease_left=lease_left,
        on_fetched=processor.metrics.batch_phase_seconds.labels("fetch").observe,
    )
    kafka.install(
        app,
        kafka.Hooks(
            delivery,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            fetch_on_demand=not settings.fetch_ahead,
            bootstrap=clients.kafka(settings) if settings.probe_changelog_ends else None,
        ),
    )

    @app.agent(channel, name="ordered", concurrency=1)
    async def ordered(stream: Any) -> None:
        """Declares the ordered topics so Faust subscribes and assigns them; their records reach
        ``deliver`` straight from the fetch (workers/kafka/delivery.py), never this stream.

        Faust's stream acks every event it handed out once the agent moves on, also events of
        partitions revoked meanwhile, and such an ack lets a later commit skip unprocessed
        records. So an event here is a bug: stop at once, with nothing acked.
        """
        async for event in stream.events():
            log.critical(
                "an event reached the ordered agent (%s:%s@%s): batch delivery is not installed; stopping",
                event.message.topic,
                event.message.partition,
                event.message.offset,
            )
            os._exit(EXIT_CRITICAL)

    return delivery


def _producer(settings: Settings) -> AIOKafkaProducer:
    """seqguard's own producer: acks from all in-sync replicas, large batches, a short linger."""
    return clients.producer(
        settings,
        client_id=f"{settings.app_id}-sink",
        acks="all",
        linger_ms=settings.producer_linger_ms,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
    )


async def _run_batch(processor: OrderedProcessor, records: list[InRecord], fence: Fence) -> bool:
    """Process one batch to the end, whatever happens around it.

    The delivery acks the batch's records only after this returned: an error stops the
    process before any ack (nothing is committed), and a cancellation (shutdown) waits
    for the batch to finish before it propagates, so no changelog write is cut short.
    """
    task = asyncio.ensure_future(processor.process_batch(records, fence))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        processor.stopping = True  # an event waiting for a dependency drops the batch, unwritten
        await task
        raise
    except BaseException:
        log.critical("batch failed; stopping the worker without acknowledging it", exc_info=True)
        os._exit(EXIT_CRITICAL)


def _active_partitions(app: faust.App, settings: Settings) -> set[int]:
    topics = {settings.input_topic, settings.repartition_topic}
    return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic in topics}


def _update_lag(app: faust.App, settings: Settings, metrics: Metrics) -> None:
    """Lag from the fetch high-water mark (end_offsets is wrong on the embedded broker)."""
    consumer = app.consumer
    sources = (settings.input_topic, settings.repartition_topic)  # forget_partitions removes exactly these
    for tp in consumer.assignment():
        if tp.topic not in sources:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # noqa: BLE001, S112 - no fetch yet for this partition
            continue
        position = consumer._read_offset.get(tp)  # type: ignore[attr-defined]
        if highwater is not None and position is not None:
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position - 1))
