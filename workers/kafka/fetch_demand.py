"""Fetch on demand: the worker's consumer asks the broker when it wants records, not ahead.

aiokafka's fetcher sends the next fetch for a broker as soon as the records of the last
one are taken (prefetch). For a consumer that spends a cycle on each batch (process, then
wait for the output's and the state's acknowledgements) that fetch is answered at the
start of the cycle and its records are handed out at the start of the next: a record
waits between one and two cycles before it is processed. Fetching when the records are
asked for costs one round trip instead: between one round trip and one cycle. In two
alternating pairs of ``benchmarks.throughput`` runs on the embedded broker, end-to-end p50
went from 60/53 to 47/45 ms at 2,000 events/s and from 30/31 to 24/21 ms at 500/s; at
5,000/s it did not change (57-63 ms: a fetch itself took 11 ms there).

A fetcher marked here (``on_demand``) sends a fetch only while a ``fetched_records`` call
that found no records waits (again after an empty answer), or while the last fetch said
more records wait on the broker than it returned (a backlog: fetching those ahead makes
nothing stale, and keeps a catching-up worker's fetches overlapped with its batches).
Everything else (offset resets, metadata, backoff for partitions with records left) stays
aiokafka's. SEQGUARD_FETCH_AHEAD=true restores the prefetch.

Patches ``Fetcher._get_actions_per_node`` and ``Fetcher.fetched_records`` (checked
against aiokafka 0.14.0); other consumers of the process keep aiokafka's behaviour.
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer import fetcher as aiokafka_fetcher


def on_demand(fetcher: Any) -> None:
    """Fetch for this fetcher only while a caller waits for records."""
    fetcher._seqguard_on_demand = True
    fetcher._seqguard_waiting = 0


def behind(fetcher: Any, assignment: Any) -> bool:
    """Does the last fetch say more records wait on the broker than were fetched (a backlog)?

    Those are there already: fetching them ahead makes nothing stale. Partitions whose records
    are still held are left out (Faust leaves an active table's changelog records unread)."""
    records = fetcher._records
    for tp in assignment.tps:
        state = assignment.state_value(tp)
        if tp in records or state.paused or not state.has_valid_position or state.highwater is None:
            continue
        if state.position < state.highwater:
            return True
    return False


def mark_on_start(consumer: Any) -> None:
    """Mark ``consumer``'s fetcher, which aiokafka creates in ``start``."""
    start = consumer.start

    async def start_on_demand() -> None:
        await start()
        on_demand(consumer._fetcher)

    consumer.start = start_on_demand


def install() -> None:
    cls = aiokafka_fetcher.Fetcher
    if getattr(cls, "_seqguard_on_demand_patched", False):
        return
    actions_per_node = cls._get_actions_per_node
    fetched_records = cls.fetched_records

    def actions(self: Any, assignment: Any) -> Any:
        fetches, resets, timeout, invalid_metadata, resumes = actions_per_node(self, assignment)
        on_demand = fetches and getattr(self, "_seqguard_on_demand", False)
        if on_demand and not self._seqguard_waiting and not behind(self, assignment):
            fetches = []  # nobody waits: the next caller that finds nothing wakes the routine
        return fetches, resets, timeout, invalid_metadata, resumes

    async def fetched(
        self: Any,
        partitions: Any,
        timeout: float = 0,  # noqa: ASYNC109 - aiokafka's signature
        max_records: int | None = None,
    ) -> Any:
        if not getattr(self, "_seqguard_on_demand", False):
            return await fetched_records(self, partitions, timeout=timeout, max_records=max_records)
        # Records already here are handed out first; only a caller that finds none asks the
        # broker, and the routine fetches (again after an empty answer) while it waits.
        drained = await fetched_records(self, partitions, timeout=0, max_records=max_records)
        if drained or not timeout:
            return drained
        self._seqguard_waiting += 1
        self._notify(self._wait_consume_future)  # the routine recomputes its fetches now
        try:
            return await fetched_records(self, partitions, timeout=timeout, max_records=max_records)
        finally:
            self._seqguard_waiting -= 1

    cls._get_actions_per_node = actions  # type: ignore[method-assign]
    cls.fetched_records = fetched  # type: ignore[method-assign]
    cls._seqguard_on_demand_patched = True  # type: ignore[attr-defined]
