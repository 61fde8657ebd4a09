"""The worker's answers about aggregates: /aggregates/{id} and /gaps (JSON only).

A worker answers for the partitions it owns. Asked about another aggregate, it says where
that one lives: 307 to the owner, or 421 while no single owner is known (a rebalance).
Owners are the group's members as Faust's assignor last distributed the state table's
changelog partitions, each with the URL it advertises (SEQGUARD_WEB_URL, Faust's
``canonical_url``). Aggregate IDs are untrusted: they go out JSON-encoded, and
percent-encoded in a Location header, never into HTML.

/gaps pages by cursor (``?limit=&after=<next>``), not by page number: between two requests
aggregates are resolved and others park, and an offset would then skip or repeat some.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tables.inspect import owner_of, page, parse_limit
from workers.errors import CriticalError
from workers.inspect import aggregate_view, held_views, partition_of, state_partition

if TYPE_CHECKING:
    from workers.app import Runtime


Answer = tuple[dict[str, Any], int, dict[str, str] | None]  # JSON body, status, headers


class AggregatePages:
    """What /aggregates/{id} and /gaps answer, from Faust's assignment and the state store."""

    def __init__(self, app: Any, runtime: Runtime, table: Any) -> None:
        assert runtime.processor is not None
        self.app, self.runtime, self.table = app, runtime, table
        self.settings = runtime.settings
        self.processor = runtime.processor
        self.me = self.settings.advertised_url
        self.sources = {self.settings.input_topic, self.settings.repartition_topic}

    def active(self) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic in self.sources}

    def members(self) -> dict[str, set[int]]:
        """Member URL -> the state partitions it owns, as the last assignment said."""
        distribution = self.app.router.table_metadata(self.table.name)
        out = {str(url).rstrip("/"): {p for parts in tps.values() for p in parts} for url, tps in distribution.items()}
        out.setdefault(self.me, set())
        return out

    def busy(self) -> str | None:
        """Why this worker's answers would be incomplete right now, if they would."""
        app = self.app
        if app.rebalancing:
            return "rebalancing"
        if not app.tables.recovery.completed.is_set() or app.in_recovery:
            return "recovering its tables"
        return None

    def aggregate(self, aggregate_id: str) -> Answer:
        """One aggregate's state if this worker owns it; else where it lives (307, or 421)."""
        try:
            aggregate_id.encode()
        except UnicodeEncodeError:
            return {"error": "the aggregate ID is not valid UTF-8"}, 400, None
        partition = partition_of(aggregate_id, self.settings.partitions)
        where = {"aggregate_id": aggregate_id, "partition": partition, "worker": self.me}
        if self.app.rebalancing:
            return {**where, "owner": None, "error": "rebalancing: the owner is not known yet"}, 421, None
        mine = self.active()
        held_on = state_partition(self.processor.store, aggregate_id, mine)
        if held_on is not None or partition in mine:
            return self._own(where, held_on if held_on is not None else partition)
        owner = owner_of(partition, self.members())
        if owner is None or owner == self.me:
            return {**where, "owner": None, "error": "no worker owns this partition now"}, 421, None
        location = f"{owner}/aggregates/{quote(aggregate_id, safe='')}"
        return {**where, "owner": owner}, 307, {"Location": location}

    def _own(self, where: dict[str, Any], partition: int) -> Answer:
        where = {**where, "partition": partition, "owner": self.me}
        why_not = self.busy()
        if why_not is not None:
            return {**where, "error": f"this worker is {why_not}; ask again"}, 503, None
        try:
            found = aggregate_view(self.processor.store, where["aggregate_id"], partition, self.processor.clock())
        except CriticalError as exc:  # an unreadable state record: the worker stops on it when it processes it
            return {**where, "error": str(exc)}, 500, None
        if found is None:
            return {**where, "error": "no state for this aggregate (never seen, or forgotten)"}, 404, None
        return {**found.as_json(), "worker": self.me, "owner": self.me}, 200, None

    def gaps(self, query: Mapping[str, str]) -> Answer:
        """This worker's aggregates with an open gap or parked, oldest first, a page at a time."""
        workers = sorted(self.members())
        try:
            limit = parse_limit(query.get("limit"))
            why_not = self.busy()
            if why_not is not None:
                return (
                    {"error": f"this worker is {why_not}; ask again", "worker": self.me, "workers": workers},
                    503,
                    None,
                )
            mine = self.active()
            views = held_views(self.processor.store, mine, self.processor.clock())
            chosen, following = page(views, query.get("after") or None, limit)
        except ValueError as exc:
            return {"error": str(exc), "worker": self.me}, 400, None
        except CriticalError as exc:
            return {"error": str(exc), "worker": self.me, "workers": workers}, 500, None
        body = {
            "worker": self.me,
            "worker_id": self.runtime.worker_id,
            "partitions": sorted(mine),
            "partition_count": self.settings.partitions,
            "workers": workers,
            "held": len(views),
            "limit": limit,
            "next": following,
            "aggregates": [v.as_json() for v in chosen],
        }
        return body, 200, None


def install_aggregate_pages(app: Any, runtime: Runtime, table: Any) -> None:
    pages = AggregatePages(app, runtime, table)

    @app.page("/aggregates/{aggregate_id:[\\s\\S]+}")  # any ID, "/" and newlines too (percent-encoded)
    async def aggregate_page(web: Any, request: Any, aggregate_id: str) -> Any:
        """One aggregate's state, from the worker that owns it (others redirect there)."""
        body, status, headers = pages.aggregate(aggregate_id)
        return web.json(body, status=status, headers=headers)

    @app.page("/gaps")
    async def gaps_page(web: Any, request: Any) -> Any:
        """This worker's parked and gapped aggregates: ?limit= (1-1000, default 100) &after=<next>."""
        body, status, headers = pages.gaps(request.query)
        return web.json(body, status=status, headers=headers)
