"""Two narrow changes to faust-streaming's aiokafka driver (checked against 0.15.3).

* Fetch wait: Faust passes a fixed ``fetch_max_wait_ms=1500`` to aiokafka. A waiting fetch
  on the embedded broker is answered only when the wait expires, so the wait is the latency
  floor there (docs/embedded-broker.md): it becomes ``SEQGUARD_FETCH_MAX_WAIT_MS``.
* Changelog ends: table recovery reads each changelog up to the offset ListOffsets "latest"
  reports. The embedded broker reports the start of the partition's last record batch + 1,
  so Faust silently skipped the rest of that batch (29 of 200 keys wrong after a failover).
  Here the reported end is checked against the high-water mark a fetch returns, which is
  exact on every broker, and the larger one wins. On Apache Kafka the two agree; the check
  costs one short fetch per recovery.

Both read the app's ``Hooks`` (``workers.kafka.install`` attaches them); ``install`` here is
called from there, after the version check.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

from workers.kafka import hooks_of
from workers.kafka.read import read_to_end

log = logging.getLogger(__name__)


def install() -> None:
    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_seqguard_patched", False):
        return
    create_consumer = thread_cls._create_worker_consumer
    end_offsets = thread_cls._highwaters

    def create(self: Any, transport: Any) -> Any:
        consumer = create_consumer(self, transport)
        hooks = hooks_of(self.app)
        if hooks is not None and hooks.fetch_max_wait_ms is not None:
            consumer._fetch_max_wait_ms = hooks.fetch_max_wait_ms
        return consumer

    async def highwaters(self: Any, partitions: list[Any]) -> Mapping[Any, int]:
        reported = await end_offsets(self, partitions)
        hooks = hooks_of(self.app)
        if hooks is None or hooks.bootstrap is None or self.consumer.in_transaction:
            return reported
        fetched = await fetched_highwaters(hooks.bootstrap, reported)
        corrected = {tp: max(end, fetched.get(tp, end)) for tp, end in reported.items()}
        moved = {tp: (reported[tp], end) for tp, end in corrected.items() if end != reported[tp]}
        if moved:
            log.info("changelog ends corrected by a fetch (ListOffsets -> high-water mark): %s", moved)
        return corrected

    thread_cls._create_worker_consumer = create  # type: ignore[method-assign]
    thread_cls._highwaters = highwaters  # type: ignore[method-assign]
    thread_cls._seqguard_patched = True  # type: ignore[attr-defined]


async def fetched_highwaters(bootstrap: str, ends: Mapping[Any, int], wait: float = 10.0) -> dict[Any, int]:
    """The high-water mark of each partition, as a fetch from just before ``ends`` reports it."""
    if not ends:
        return {}
    by_tp = {TopicPartition(tp.topic, tp.partition): tp for tp in ends}
    start = {ktp: max(0, (ends[tp] or 0) - 1) for ktp, tp in by_tp.items()}
    read = await read_to_end(bootstrap, start, quiet=wait, max_wait=wait, fetch_wait_ms=10)
    missing = sorted(str(ktp) for ktp in by_tp if ktp not in read.highwaters)
    if missing:
        log.warning("no fetch answer for %s: keeping ListOffsets' ends", missing)
    return {by_tp[ktp]: highwater for ktp, highwater in read.highwaters.items()}
