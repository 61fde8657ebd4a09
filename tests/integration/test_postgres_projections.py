"""Once-only projections in a real PostgreSQL (workers/ledger/postgres.py), no mocks.

Each test has its own tables and namespace, so they share one server (postgres_url); the
outage test stops and starts a server of its own (private_postgres).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from tests.pg import PrivatePostgres
from workers.errors import DependencyDown
from workers.ledger import postgres as pg_ledger
from workers.ledger.postgres import Projections, is_outage

Fn = Callable[[asyncpg.Connection], Awaitable[None]]


def uid() -> str:
    return uuid.uuid4().hex[:10]


class Scene:
    """One test's names: an idempotency table, a namespace and the user's projection table."""

    def __init__(self, url: str, admin: asyncpg.Connection) -> None:
        self.url = url
        self.admin = admin
        self.applied = f"applied_{uid()}"
        self.namespace = f"ns_{uid()}"
        self.totals = f"totals_{uid()}"

    def projections(
        self, namespace: str | None = None, *, pool_max: int = 4, command_timeout: float = 5.0
    ) -> Projections:
        return Projections(
            self.url,
            namespace=namespace or self.namespace,
            ttl=3600,
            table=self.applied,
            pool_max=pool_max,
            command_timeout=command_timeout,
        )

    def add(self, account: str, amount: int) -> Fn:
        """A projection that is wrong if applied twice: it adds to a running total."""

        async def fn(conn: asyncpg.Connection) -> None:
            await conn.execute(
                f"INSERT INTO {self.totals} (account, total) VALUES ($1, $2)"
                f" ON CONFLICT (account) DO UPDATE SET total = {self.totals}.total + excluded.total",
                account,
                amount,
            )

        return fn

    async def totals_now(self) -> dict[str, int]:
        return {r["account"]: r["total"] for r in await self.admin.fetch(f"SELECT account, total FROM {self.totals}")}

    async def marks(self, namespace: str | None = None) -> int:
        return int(
            await self.admin.fetchval(
                f"SELECT count(*) FROM {self.applied} WHERE namespace = $1", namespace or self.namespace
            )
        )


@pytest.fixture
async def scene(postgres_url: str) -> AsyncIterator[Scene]:  # noqa: F811
    admin = await asyncpg.connect(postgres_url)
    s = Scene(postgres_url, admin)
    await admin.execute(f"CREATE TABLE {s.totals} (account text PRIMARY KEY, total int NOT NULL CHECK (total < 1000))")
    yield s
    await admin.execute(f"DROP TABLE IF EXISTS {s.totals}; DROP TABLE IF EXISTS {s.applied}")
    await admin.close()


async def test_once_applies_a_projection_once(scene: Scene) -> None:
    p = scene.projections()
    await p.start()
    try:
        assert [await p.once("deposit", "evt-1", scene.add("a", 5)) for _ in range(2)] == [True, False]
        assert [await p.once("deposit", "evt-2", scene.add("a", 7)) for _ in range(5)] == [True] + [False] * 4
        assert [await p.once("deposit", "evt-3", scene.add("b", 1)) for _ in range(5)] == [True] + [False] * 4
        # The same key under another effect is another effect.
        assert await p.once("bonus", "evt-1", scene.add("b", 100))
        assert await scene.totals_now() == {"a": 12, "b": 101}  # one clean pass
        assert await scene.marks() == 4
    finally:
        await p.close()


async def test_a_failing_projection_leaves_nothing(scene: Scene) -> None:
    p = scene.projections()
    await p.start()

    async def half_then_fail(conn: asyncpg.Connection) -> None:
        await scene.add("a", 5)(conn)
        raise ValueError("handler bug")

    try:
        with pytest.raises(ValueError, match="handler bug"):
            await p.once("deposit", "evt-1", half_then_fail)
        assert await scene.totals_now() == {}
        assert await scene.marks() == 0
        assert await p.once("deposit", "evt-1", scene.add("a", 5))  # the redelivery runs it
        assert await scene.totals_now() == {"a": 5}
    finally:
        await p.close()


async def test_sql_errors_of_the_projection_propagate_unchanged(scene: Scene) -> None:
    p = scene.projections()
    await p.start()
    try:
        # The user's CHECK constraint (a business failure): the caller dead-letters it.
        with pytest.raises(asyncpg.exceptions.CheckViolationError) as caught:
            await p.once("deposit", "big", scene.add("a", 5000))
        assert not is_outage(caught.value)

        async def bad_sql(conn: asyncpg.Connection) -> None:
            await conn.execute("SELEKT 1")

        with pytest.raises(asyncpg.exceptions.PostgresSyntaxError):
            await p.once("deposit", "typo", bad_sql)

        async def dup(conn: asyncpg.Connection) -> None:
            await conn.execute(f"INSERT INTO {scene.totals} VALUES ('x', 1), ('x', 2)")

        with pytest.raises(asyncpg.exceptions.UniqueViolationError) as dup_caught:
            await p.once("deposit", "dup", dup)
        assert not is_outage(dup_caught.value)
        assert await scene.marks() == 0
        assert await scene.totals_now() == {}
        assert await p.once("deposit", "ok", scene.add("a", 1))  # the pool is fine afterwards
    finally:
        await p.close()


async def test_two_apps_with_one_namespace_share_an_effect(scene: Scene) -> None:
    first, second = scene.projections(), scene.projections()
    other = scene.projections(namespace=f"other_{uid()}")
    await asyncio.gather(first.start(), second.start(), other.start())  # racing CREATE TABLE IF NOT EXISTS
    try:
        assert await first.once("deposit", "evt-1", scene.add("a", 5))
        assert not await second.once("deposit", "evt-1", scene.add("a", 5))
        assert await other.once("deposit", "evt-1", scene.add("b", 5))
        assert not await other.once("deposit", "evt-1", scene.add("b", 5))
        assert await scene.totals_now() == {"a": 5, "b": 5}
    finally:
        await asyncio.gather(first.close(), second.close(), other.close())


async def test_workers_starting_together_create_the_table_once(postgres_url: str) -> None:  # noqa: F811
    # CREATE TABLE IF NOT EXISTS is not atomic: racers get unique_violation or "type already
    # exists" (most runs of these 5 rounds of 8 racers meet one); start() must take both as done.
    admin = await asyncpg.connect(postgres_url)
    try:
        for _ in range(5):
            table = f"applied_{uid()}"
            racers = [Projections(postgres_url, namespace="n", ttl=60, table=table) for _ in range(8)]
            try:
                await asyncio.gather(*(p.start() for p in racers))
                assert await racers[0].once("e", "k", lambda conn: asyncio.sleep(0))
            finally:
                await asyncio.gather(*(p.close() for p in racers))
                await admin.execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        await admin.close()


async def test_concurrent_deliveries_run_once(scene: Scene) -> None:
    p = scene.projections(pool_max=4)
    await p.start()
    ran = 0

    async def slow_add(conn: asyncpg.Connection) -> None:
        nonlocal ran
        ran += 1
        await asyncio.sleep(0.05)  # keep the transaction open while the others arrive
        await scene.add("a", 5)(conn)

    try:
        results = await asyncio.gather(*(p.once("deposit", "evt-1", slow_add) for _ in range(20)))
        assert results.count(True) == 1
        assert ran == 1
        assert await scene.totals_now() == {"a": 5}
        assert await scene.marks() == 1
    finally:
        await p.close()


async def test_prune_removes_only_old_rows_of_its_namespace(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    p = scene.projections()
    neighbour = scene.projections(namespace=f"other_{uid()}")
    await p.start()
    try:
        for i in range(7):
            assert await p.once("deposit", f"evt-{i}", scene.add("a", 1))
        assert await neighbour.once("deposit", "evt-0", scene.add("b", 1))
        # Age five of ours and the neighbour's past the ttl (3600 s).
        await scene.admin.execute(
            f"UPDATE {scene.applied} SET applied_at = now() - interval '2 hours'"
            " WHERE (namespace = $1 AND key <> ALL($2::text[])) OR namespace = $3",
            scene.namespace,
            ["evt-5", "evt-6"],
            neighbour.namespace,
        )
        monkeypatch.setattr(pg_ledger, "PRUNE_CHUNK", 2)  # several chunks: 2 + 2 + 1
        assert await p.prune() == 5
        assert await p.prune() == 0
        assert await scene.marks() == 2
        assert await scene.marks(neighbour.namespace) == 1
        assert await p.prune(older_than=0) == 2  # explicit age
        # A pruned key is forgotten: a (very late) redelivery would run again.
        assert await p.once("deposit", "evt-6", scene.add("a", 1))
    finally:
        await asyncio.gather(p.close(), neighbour.close())


async def test_a_connection_killed_mid_projection_is_an_outage_and_rolls_back(scene: Scene) -> None:
    p = scene.projections()
    await p.start()

    async def add_then_die(conn: asyncpg.Connection) -> None:
        await scene.add("a", 5)(conn)
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    try:
        with pytest.raises(DependencyDown) as caught:
            await p.once("deposit", "evt-1", add_then_die)
        assert caught.value.dependency == "postgres"
        assert is_outage(caught.value.__cause__)  # type: ignore[arg-type]
        assert await scene.totals_now() == {}
        assert await scene.marks() == 0
        assert await p.once("deposit", "evt-1", scene.add("a", 5))  # retried on a fresh connection
        assert await scene.totals_now() == {"a": 5}
    finally:
        await p.close()


async def test_a_timed_out_projection_is_an_outage_and_frees_its_claim(scene: Scene) -> None:
    p = scene.projections(command_timeout=0.5, pool_max=1)
    await p.start()

    async def add_then_hang(conn: asyncpg.Connection) -> None:
        await scene.add("a", 5)(conn)
        await conn.execute("SELECT pg_sleep(3)")

    try:
        began = time.monotonic()
        with pytest.raises(DependencyDown) as caught:
            await p.once("deposit", "evt-1", add_then_hang)
        assert isinstance(caught.value.__cause__, TimeoutError)
        # The server query was cancelled, not left running with our claim's row lock held.
        assert await p.once("deposit", "evt-1", scene.add("a", 5))
        assert time.monotonic() - began < 2.5
        assert await scene.totals_now() == {"a": 5}
    finally:
        await p.close()


async def test_server_down_is_an_outage_and_the_pool_recovers(private_postgres: PrivatePostgres) -> None:  # noqa: F811
    url = private_postgres.url
    admin = await asyncpg.connect(url)
    await admin.execute("CREATE TABLE totals (account text PRIMARY KEY, total int NOT NULL)")
    await admin.close()

    async def add(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "INSERT INTO totals VALUES ('a', 1) ON CONFLICT (account) DO UPDATE SET total = totals.total + 1"
        )

    p = Projections(url, namespace="ns", ttl=3600, connect_timeout=1, command_timeout=2)
    late = Projections(url, namespace="ns", ttl=3600, connect_timeout=1, command_timeout=2)
    await p.start()
    try:
        assert await p.once("deposit", "evt-1", add)  # the pool now holds a connection
        assert await p.ping()
        private_postgres.stop()

        began = time.monotonic()
        for key in ("evt-2", "evt-2", "evt-1"):
            with pytest.raises(DependencyDown) as caught:
                await p.once("deposit", key, add)
            assert caught.value.dependency == "postgres"
            assert caught.value.__cause__ is not None
        with pytest.raises(DependencyDown):
            await late.start()  # a worker starting during the outage
        assert not await p.ping()
        assert time.monotonic() - began < 10

        private_postgres.start()
        assert await p.ping()
        assert await p.once("deposit", "evt-2", add)  # same object: the pool reconnected
        assert not await p.once("deposit", "evt-1", add)
        await late.start()
        assert not await late.once("deposit", "evt-2", add)
        admin = await asyncpg.connect(url)
        assert await admin.fetchval("SELECT total FROM totals WHERE account = 'a'") == 2
        await admin.close()
    finally:
        await asyncio.gather(p.close(), late.close())


async def test_a_missing_database_waits_as_an_outage(postgres_url: str) -> None:  # noqa: F811
    # A misconfigured DSN is no event's fault: waiting beats dead-lettering every event.
    p = Projections(postgres_url.rsplit("/", 1)[0] + f"/nope_{uid()}", namespace="n", ttl=60)
    try:
        with pytest.raises(DependencyDown) as caught:
            await p.start()
        assert isinstance(caught.value.__cause__, asyncpg.exceptions.InvalidCatalogNameError)
        assert not await p.ping()
    finally:
        await p.close()


def test_table_names_are_identifiers() -> None:
    for bad in ("x; DROP TABLE y", "1abc", "a b", "a.b.c", "", 'q"uote'):
        with pytest.raises(ValueError, match="identifier"):
            Projections("postgresql://localhost/x", namespace="n", ttl=1, table=bad)
    Projections("postgresql://localhost/x", namespace="n", ttl=1, table="ops.seqguard_applied")


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError("Multiple exceptions: [Errno 111] Connect call failed"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), True),
        (asyncpg.exceptions.CrashShutdownError("crash"), True),
        (asyncpg.exceptions.TooManyConnectionsError("too many clients"), True),
        (asyncpg.exceptions.InterfaceError("connection is closed"), True),
        (asyncpg.exceptions.InvalidPasswordError("password authentication failed"), True),
        (asyncpg.exceptions.InvalidCatalogNameError('database "x" does not exist'), True),
        (DependencyDown("redis down", dependency="redis"), True),
        (asyncpg.exceptions.InterfaceError("pool is closed"), False),  # our own shutdown
        (asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"), False),
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
        (asyncpg.exceptions.CheckViolationError("check"), False),
        (asyncpg.exceptions.PostgresSyntaxError("syntax"), False),
        (asyncpg.exceptions.InvalidTextRepresentationError("bad int"), False),
        (asyncpg.exceptions.UndefinedTableError("no such table"), False),
        (ValueError("handler bug"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_is_outage(exc: BaseException, outage: bool) -> None:
    assert is_outage(exc) is outage
