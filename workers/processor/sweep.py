"""The sweep: gap timeouts, TTL expiry and gauges for the aggregates this worker owns.

It runs from a timer, under the processor's lock (between batches), and carries out
what ``tables.timers`` decides, like a batch: changed records are written once each,
behind the same write fence as a batch. It never runs while a rebalance or a table
recovery is under way (app.py), and gaps time out on each partition's gap clock
(tables.clock), never on wall time.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from tables import timers
from workers import logs
from workers.kafka.sink import FenceCheck
from workers.processor.batch import OrderedProcessor
from workers.processor.store import Loaded

log = logging.getLogger(__name__)

IDLE_SWEEP_CHUNK = 10_000  # aggregates looked at per sweep for TTL expiry


class Sweeper:
    def __init__(self, processor: OrderedProcessor) -> None:
        self.processor = processor
        self._last_ttl_pass = 0.0
        #: The TTL pass in progress: keys still to look at. A pass is spread over sweeps, a
        #: chunk each, so it never holds the processor for long whatever the key count.
        self._idle_keys: Iterator[tuple[bytes, int]] | None = None

    async def sweep(
        self,
        active: set[int],
        complete_at: Callable[[int], Mapping[str, float | None]],
        fence: FenceCheck | None = None,
    ) -> bool:
        """One pass; ``complete_at(partition)``: since when each of its sources is read to its
        end (None: lagging). False if the fence closed on it (nothing written)."""
        held: list[Held] = []

        async def work() -> None:
            held.extend(await self._pass(active, complete_at))

        if not await self.processor.run_fenced(work, fence):
            return False
        self._update_gauges(active, held)
        return True

    async def _pass(self, active: set[int], complete_at: Callable[[int], Mapping[str, float | None]]) -> list[Held]:
        p = self.processor
        now = p.clock()
        p.store.reindex(active)
        times = {partition: p.gap_clock(partition).advance(complete_at(partition), now) for partition in active}
        for key, partition in list(p.store.held.items()):
            gap_now = times.get(partition)  # None: unknown until the partition was read (or found idle)
            if gap_now is not None and await self.expire_gaps(p.load(key, partition), gap_now):
                self._log_gap(key, partition, gap_now, complete_at(partition))
        ttl = p.settings.state_ttl
        if self._idle_keys is None and now - self._last_ttl_pass > min(60.0, ttl / 10):
            self._last_ttl_pass = now
            self._idle_keys = iter(list(p.store.keys(active)))
        if self._idle_keys is not None:
            self._expire_idle(active, now, ttl)
        p.count_batch()  # events a gap skip released count too
        held = []
        for key, part in p.store.held.items():
            agg = p.load(key, part).agg
            clock = times.get(part)
            oldest = agg.buffer.oldest_at()
            age = 0.0 if clock is None or oldest is None else max(0.0, clock - oldest)  # unknown clock: no age yet
            held.append(Held(part, agg.seq.parked is not None, oldest is not None, age))
        return held

    def _log_gap(self, key: bytes, partition: int, clock: float, complete: Mapping[str, float | None]) -> None:
        """Why a gap timed out: the clock, and what it was made of (tables.clock)."""
        wall, newest = self.processor.clock(), self.processor.gap_clock(partition).streams
        log.info(
            "gap of %r timed out: partition %d's clock %.3f (wall %.3f); read to the end as of %s; newest %s",
            key,
            partition,
            clock,
            wall,
            dict(complete),
            newest,
            extra=logs.fields(
                aggregate_id=key.decode("utf-8", "replace"),
                partition=partition,
                gap_clock=clock,
                wall=wall,
                read_to_end=dict(complete),
                newest=dict(newest),
            ),
        )

    async def expire_gaps(self, loaded: Loaded, now: float = math.inf) -> bool:
        """Act on the aggregate's timed-out gaps; True if there was one."""
        policy_of = self.processor.policies.for_type
        acted = False
        while (result := timers.expire_gap(loaded.agg, policy_of, now)) is not None:
            acted = True
            await self.processor.record_gap(loaded, result)
            if not isinstance(result, timers.Gap):
                break  # parked: it waits for an operator
        return acted

    def _expire_idle(self, active: set[int], now: float, ttl: float) -> None:
        """Look at the next chunk of the TTL pass: prune old seen IDs, forget idle aggregates."""
        p = self.processor
        assert self._idle_keys is not None
        chunk = list(itertools.islice(self._idle_keys, IDLE_SWEEP_CHUNK))
        if len(chunk) < IDLE_SWEEP_CHUNK:
            self._idle_keys = None  # the pass is complete
        for key, partition in chunk:
            if partition not in active or p.is_loaded(key):
                continue  # moved away since the pass began, or being written this sweep
            loaded = p.store.load(key, partition)
            expiry = timers.expire_idle(loaded.agg, now, ttl)
            if expiry is not timers.Expiry.KEEP:
                p.store.save(loaded, forget=expiry is timers.Expiry.FORGET)

    def _update_gauges(self, active: set[int], held: list[Held]) -> None:
        """From the aggregates this sweep loaded (every held one): no second decode."""
        m, waiting = self.processor.metrics, self.processor.store.waiting
        parked: Counter[int] = Counter(h.partition for h in held if h.parked)
        gapped: Counter[int] = Counter(h.partition for h in held if h.gap and not h.parked)
        oldest: dict[int, float] = {}
        for h in held:
            if h.gap and not h.parked:
                oldest[h.partition] = max(oldest.get(h.partition, 0.0), h.gap_age)
        for partition in active:
            label = str(partition)
            m.parked.labels(label).set(parked[partition])
            m.buffered.labels(label).set(max(0, waiting[partition]))
            m.gap_open.labels(label).set(gapped[partition])
            m.gap_oldest.labels(label).set(oldest.get(partition, 0.0))


@dataclass(frozen=True, slots=True)
class Held:
    """What the gauges need of one held aggregate. ``gap_age``: on its partition's gap clock."""

    partition: int
    parked: bool
    gap: bool
    gap_age: float
