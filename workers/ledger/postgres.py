"""Once-only database projections in PostgreSQL (asyncpg).

Kafka delivers an event again after a crash between its effect and the offset commit. A
projection is therefore written in the same transaction as an idempotency row keyed by
(namespace, effect, key): both commit, or neither does, so a redelivery finds the row and
skips. An unreachable server is an outage (DependencyDown: the event waits and is retried);
an error of the projection's own SQL is the event's failure and propagates unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import asyncpg

from workers.errors import DependencyDown, TransientError

#: Interpolated into SQL, so only plain (optionally schema-qualified) identifiers.
_IDENT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")
#: Rows deleted per statement by prune(): bounded locks and WAL bursts on a big table.
PRUNE_CHUNK = 10_000
#: SQLSTATE classes of a server that is unreachable or cannot serve anyone right now:
#: 08 connection exception, 57 operator intervention (shutdown, crash, starting up),
#: 53 insufficient resources (too many connections, disk full), 58 system (I/O) error;
#: and of a connection refused by configuration (28 bad credentials, 3D no such database):
#: no event is at fault, so they wait for a fix rather than all being dead-lettered.
_OUTAGE_CLASSES = ("08", "57", "53", "58", "28", "3D")
#: 57014 query_canceled is a statement_timeout of the projection's own query, not an outage.
_NOT_OUTAGE = frozenset({"57014"})

#: Two workers starting together: IF NOT EXISTS is not atomic, the loser gets one of these.
_CREATED_CONCURRENTLY = (
    asyncpg.exceptions.UniqueViolationError,  # pg_type or pg_class: the same name, inserted at the same moment
    asyncpg.exceptions.DuplicateTableError,
    asyncpg.exceptions.DuplicateObjectError,  # "type ... already exists": the table's row type
)

_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError (asyncio's too) is an OSError
    asyncpg.exceptions.PostgresConnectionError,  # incl. ConnectionDoesNotExistError
)


def is_outage(exc: BaseException) -> bool:
    """True when exc means the server is unreachable or went away (retry later), False for
    errors of the SQL itself (constraint, syntax, data: the event's own failure)."""
    if isinstance(exc, (DependencyDown, *_OUTAGE_TYPES)):
        return True
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        # "[the underlying] connection is closed"; not "pool is closed", our own shutdown.
        return "connection is closed" in str(exc)
    if isinstance(exc, asyncpg.exceptions.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in _OUTAGE_CLASSES and state not in _NOT_OUTAGE
    return False


class Projections:
    """Runs projections once per (namespace, effect, key), on a pool of asyncpg connections."""

    def __init__(
        self,
        dsn: str,
        *,
        namespace: str,
        ttl: float,
        pool_max: int = 4,
        connect_timeout: float = 5.0,
        command_timeout: float = 5.0,
        table: str = "seqguard_applied",
        schema: Sequence[str] = (),
    ) -> None:
        if not _IDENT.match(table):
            raise ValueError(f"not a plain SQL identifier: {table!r}")
        self.dsn = dsn
        self.namespace = namespace
        self.ttl = ttl
        self.table = table
        self.pool_max = pool_max
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        index = f"{table.rsplit('.', 1)[-1]}_applied_at_idx"  # an index lives in its table's schema
        self._ddl = (
            f"CREATE TABLE IF NOT EXISTS {table} (namespace text NOT NULL, effect text NOT NULL,"
            " key text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (namespace, effect, key))",
            f"CREATE INDEX IF NOT EXISTS {index} ON {table} (applied_at)",
            *schema,  # the projections' own tables (Registry.schema): idempotent DDL too
        )
        self._started = False
        # S608: the only interpolated name is the table, which matched _IDENT above.
        self._claim = (
            f"INSERT INTO {table} (namespace, effect, key) VALUES ($1, $2, $3)"  # noqa: S608
            " ON CONFLICT DO NOTHING RETURNING 1"
        )
        # By primary key with a LIMIT: DELETE has no LIMIT of its own.
        self._prune = (
            f"DELETE FROM {table} WHERE (namespace, effect, key) IN (SELECT namespace, effect, key FROM {table}"  # noqa: S608
            " WHERE namespace = $1 AND applied_at < now() - $2::float8 * interval '1 second' LIMIT $3)"
        )

    async def _get_pool(self) -> asyncpg.Pool:
        # min_size=0: creating the pool connects to nothing, so a worker can start while the
        # database is down; each acquire() connects again if its connection was lost.
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=0,
                    max_size=self.pool_max,
                    timeout=self.connect_timeout,
                    command_timeout=self.command_timeout,
                )
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; an outage met while using it leaves as DependencyDown."""
        try:
            async with (await self._get_pool()).acquire() as conn:
                yield conn
        except Exception as exc:
            if isinstance(exc, TransientError) or not is_outage(exc):
                raise
            await self._forget_connections()
            raise DependencyDown(f"postgres: {type(exc).__name__}: {exc}", dependency="postgres") from exc

    async def _forget_connections(self) -> None:
        # Connections opened before an outage may be half-dead (a restarted server, a dropped
        # NAT entry): the pool replaces them all at their next acquire() instead of reusing them.
        if self._pool is not None:
            await self._pool.expire_connections()

    async def start(self) -> None:
        """Create the idempotency table, its index and the projections' tables if missing
        (done by the first once() too: a worker may start while the database is down)."""
        async with self._connection() as conn:
            for statement in self._ddl:
                with contextlib.suppress(*_CREATED_CONCURRENTLY):
                    await conn.execute(statement)
        self._started = True

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def once(self, effect: str, key: str, fn: Callable[[asyncpg.Connection], Awaitable[None]]) -> bool:
        """Run fn(conn) in one transaction with the idempotency row of (effect, key): True if it
        ran and committed, False if it had been applied before (fn not called)."""
        if not self._started:
            await self.start()
        async with self._connection() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                # A concurrent once() of the same key blocks on our uncommitted row, then gets nothing.
                applied = await conn.fetchval(self._claim, self.namespace, effect, key) is not None
                if applied:
                    await fn(conn)
            except BaseException as exc:
                if not is_outage(exc):
                    await tx.rollback()
                    raise
                # A lost connection's transaction dies with it, so the rollback may fail: the
                # outage is the error to report. After a timeout it waits for asyncpg's cancel
                # request, which frees our claim's row lock (a terminate() would skip it).
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            # A COMMIT lost with the connection may still have landed: the retry then returns False.
            await (tx.commit() if applied else tx.rollback())
        return applied

    async def ping(self) -> bool:
        """True if the server answers SELECT 1 within a short time; never raises."""
        limit = min(self.connect_timeout, 2.0)
        try:
            async with asyncio.timeout(limit), (await self._get_pool()).acquire() as conn:
                return bool(await conn.fetchval("SELECT 1", timeout=limit) == 1)
        except Exception as exc:  # noqa: BLE001 - a health check reports, it does not fail
            if is_outage(exc):
                await self._forget_connections()
            return False

    async def prune(self, older_than: float | None = None) -> int:
        """Delete this namespace's rows older than older_than (default: the ttl) seconds, in
        chunks of PRUNE_CHUNK; return how many went."""
        age = self.ttl if older_than is None else older_than
        total = 0
        async with self._connection() as conn:
            while True:
                status = await conn.execute(self._prune, self.namespace, age, PRUNE_CHUNK)
                deleted = int(status.split()[-1])  # "DELETE <n>"
                total += deleted
                if deleted < PRUNE_CHUNK:
                    return total
