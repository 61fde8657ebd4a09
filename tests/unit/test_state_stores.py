"""The state store over both Faust table stores (SEQGUARD_STORE=memory|rocksdb), with the real
Sink and a producer that plays the broker: the same behaviours for each store, as quixstreams
tests its stores, and the RocksDB checkpoint's rule: nothing reaches RocksDB before its
changelog records were acknowledged, and then the values and the offset land together."""

from __future__ import annotations

import asyncio
import gc
import sys
import types
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from faust.types import TP

from tables.changelog import state_table
from tables.state import Aggregate, decode
from workers.errors import StartupError
from workers.kafka.sink import Sink
from workers.kafka.tables import faust_datadir, faust_store, worker_dir_name
from workers.processor.store import StateStore
from workers.settings import Settings

STORES = ("memory", "rocksdb")
PARTITIONS = 4


class Broker:
    """What the Sink calls of AIOKafkaProducer: each partition a log whose offsets count up."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, int], int] = {}
        self.fail: set[int] = set()  # partitions whose next batch the broker refuses
        self.closed_when_sent: list[bool] = []  # an open batch would wait out the producer's linger

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(1 << 20, 0)

    async def send_batch(self, builder: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.closed_when_sent.append(builder.closed())
        if partition in self.fail:
            fut.set_exception(RuntimeError("not acknowledged"))
            return fut
        base = self.logs.get((topic, partition), 0)
        self.logs[(topic, partition)] = base + builder.record_count()
        fut.set_result(types.SimpleNamespace(offset=base))  # RecordMetadata of a batch: its first offset
        return fut

    async def start(self) -> None: ...


class Harness:
    def __init__(self, store_type: str, datadir: Path) -> None:
        self.app = faust.App(f"unit-{store_type}", store=faust_store(Settings(store=store_type)), datadir=datadir)
        self.table = state_table(self.app, PARTITIONS)
        self.topic = str(self.table.changelog_topic.get_topic_name())
        self.broker = Broker()
        self.sink = Sink(lambda: self.broker, state_topics=frozenset({self.topic}))  # type: ignore[arg-type,return-value]
        self.store = StateStore(self.table, self.sink)

    def write(self, key: bytes, partition: int, next_seq: int | None) -> None:
        """A batch's change of one aggregate (None: forget it), as the processor makes it."""
        loaded = self.store.load(key, partition)
        if next_seq is not None:
            loaded.agg.seq.next_seq = next_seq
        self.store.save(loaded, forget=next_seq is None)

    async def commit(self) -> None:
        await self.sink.flush()
        self.store.settle()

    def next_seq(self, key: bytes, partition: int) -> int | None:
        raw = self.store.backend.get(key, partition)
        return None if raw is None else decode(raw).seq.next_seq

    def stored(self, key: bytes, partition: int) -> bytes | None:
        """What RocksDB itself holds, staging aside."""
        raw: bytes | None = self.table.data._db_for_partition(partition).get(key)
        return raw

    def checkpoint(self, partition: int) -> int | None:
        offset: int | None = self.table.data.persisted_offset(TP(self.topic, partition))
        return offset

    def close(self) -> None:
        if hasattr(self.table.data, "_dbs"):
            self.table.data._dbs.clear()  # Faust's way to close them: drop the last reference
        gc.collect()


@pytest.fixture(params=STORES)
def store_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def h(store_type: str, tmp_path: Path) -> Any:
    harness = Harness(store_type, tmp_path)
    await harness.sink.start()
    yield harness
    harness.close()


@pytest.fixture
async def rocks(tmp_path: Path) -> Any:
    harness = Harness("rocksdb", tmp_path)
    await harness.sink.start()
    yield harness
    harness.close()


# --------------------------------------------------------------------------- both stores


async def test_a_batch_reads_its_own_writes_and_settled_ones_stay(h: Harness) -> None:
    h.write(b"a", 1, 5)
    assert h.next_seq(b"a", 1) == 5  # before the flush: the batch sees what it wrote
    assert h.store.load(b"a", 1).agg.seq.next_seq == 5
    await h.commit()
    assert h.next_seq(b"a", 1) == 5
    assert list(h.store.keys({1})) == [(b"a", 1)]
    assert list(h.store.keys({0, 2, 3})) == []


async def test_rollback_leaves_every_record_as_the_changelog_has_it(h: Harness) -> None:
    h.write(b"a", 1, 5)
    h.write(b"gone", 2, 3)
    await h.commit()
    h.write(b"a", 1, 9)
    h.write(b"new", 1, 2)
    h.write(b"gone", 2, None)
    h.store.rollback()
    h.sink.discard()
    assert h.next_seq(b"a", 1) == 5 and h.next_seq(b"gone", 2) == 3 and h.next_seq(b"new", 1) is None
    assert sorted(h.store.keys({1, 2})) == [(b"a", 1), (b"gone", 2)]


async def test_a_forgotten_aggregate_is_gone_from_its_partition_only(h: Harness) -> None:
    h.write(b"a", 1, 5)
    h.write(b"b", 3, 7)
    await h.commit()
    h.write(b"a", 1, None)
    assert sorted(h.store.keys(set(range(PARTITIONS)))) == [(b"b", 3)]  # also before the flush
    await h.commit()
    assert h.next_seq(b"a", 1) is None and sorted(h.store.keys(set(range(PARTITIONS)))) == [(b"b", 3)]
    assert h.store.load(b"a", 1).agg == Aggregate()


async def test_what_the_pages_ask_holds_and_partition_holding(h: Harness) -> None:
    h.write(b"a", 1, 5)
    await h.commit()
    assert h.store.holds(b"a", 1) and not h.store.holds(b"nobody", 1)
    assert h.store.partition_holding(b"a", frozenset({0, 1})) == 1
    assert h.store.partition_holding(b"a", frozenset({0, 2})) is None
    assert h.store.partition_holding(b"nobody", frozenset(range(PARTITIONS))) is None


# --------------------------------------------------------------------------- the RocksDB checkpoint


async def test_nothing_reaches_rocksdb_before_its_changelog_records_were_acknowledged(rocks: Harness) -> None:
    for key in (b"a", b"b", b"c"):
        rocks.write(key, 2, 4)
    rocks.write(b"d", 0, 4)
    assert rocks.stored(b"a", 2) is None and rocks.checkpoint(2) is None  # staged only
    await rocks.sink.flush()
    assert rocks.stored(b"a", 2) is None  # sent, acknowledged, not yet settled: a SIGKILL here loses nothing
    rocks.store.settle()
    assert decode(rocks.stored(b"c", 2)).seq.next_seq == 4
    assert rocks.checkpoint(2) == 2 and rocks.checkpoint(0) == 0  # the offset of each partition's last record
    rocks.write(b"a", 2, 6)
    await rocks.commit()
    assert rocks.checkpoint(2) == 3 and rocks.checkpoint(0) == 0


async def test_settle_writes_each_partition_in_one_write_batch_with_its_offset(rocks: Harness) -> None:
    writes: list[tuple[int, int]] = []
    store, open_db = rocks.table.data, rocks.table.data._db_for_partition

    class Recording:
        def __init__(self, partition: int) -> None:
            self.db, self.partition = open_db(partition), partition

        def write(self, batch: Any) -> None:
            writes.append((self.partition, len(batch)))
            self.db.write(batch)

        def __getattr__(self, name: str) -> Any:
            if name in ("put", "delete"):
                raise AssertionError(f"a single {name} outside the write batch")
            return getattr(self.db, name)

    rocks.write(b"a", 1, 2)
    rocks.write(b"b", 1, 2)
    rocks.write(b"c", 3, 2)
    await rocks.sink.flush()
    store._db_for_partition = Recording
    try:
        rocks.store.settle()
    finally:
        del store._db_for_partition
    assert sorted(writes) == [(1, 3), (3, 2)]  # the values and the offset key, together


async def test_rollback_drops_the_staged_writes_and_rocksdb_never_saw_them(rocks: Harness) -> None:
    rocks.write(b"a", 1, 2)
    await rocks.commit()
    rocks.write(b"a", 1, 8)
    rocks.store.rollback()
    rocks.sink.discard()
    assert decode(rocks.stored(b"a", 1)).seq.next_seq == 2 and rocks.checkpoint(1) == 0
    rocks.write(b"b", 1, 3)  # the next batch's offsets are its own, not the dropped one's
    await rocks.commit()
    assert rocks.checkpoint(1) == 1 and rocks.next_seq(b"a", 1) == 2


async def test_an_offset_not_acknowledged_is_never_guessed(rocks: Harness) -> None:
    rocks.write(b"a", 1, 2)
    rocks.write(b"b", 2, 2)
    await rocks.commit()
    assert (rocks.checkpoint(1), rocks.checkpoint(2)) == (0, 0)
    rocks.write(b"a", 1, 3)
    rocks.write(b"b", 2, 3)
    rocks.broker.fail = {1}  # the broker refuses partition 1's batch: the flush fails
    with pytest.raises(RuntimeError):
        await rocks.sink.flush()
    assert rocks.sink.state_offsets == {}  # no offset of a flush that was not all acknowledged
    rocks.store.rollback()
    rocks.broker.fail = set()
    rocks.write(b"b", 2, 4)
    await rocks.commit()
    assert (rocks.checkpoint(1), rocks.checkpoint(2)) == (0, 2)  # partition 2 went on; 1 stayed
    assert rocks.next_seq(b"a", 1) == 2 and rocks.next_seq(b"b", 2) == 4


async def test_a_reopened_store_finds_its_values_and_its_checkpoint(tmp_path: Path) -> None:
    first = Harness("rocksdb", tmp_path)
    await first.sink.start()
    first.write(b"a", 1, 7)
    first.write(b"b", 1, 3)
    await first.commit()
    first.close()
    again = Harness("rocksdb", tmp_path)
    try:
        assert again.checkpoint(1) == 1 and again.next_seq(b"a", 1) == 7
        assert sorted(again.store.keys({1})) == [(b"a", 1), (b"b", 1)]
    finally:
        again.close()


async def test_the_offset_key_is_no_aggregate(rocks: Harness) -> None:
    from workers.errors import CriticalError

    with pytest.raises(CriticalError, match="offset"):
        rocks.store.load(rocks.table.data.offset_key, 1)
    assert not rocks.store.holds(rocks.table.data.offset_key, 1)


# --------------------------------------------------------------------------- settings


def test_each_worker_has_its_own_rocksdb_directory_across_restarts(tmp_path: Path) -> None:
    assert worker_dir_name("", 6067) == "port-6067"
    assert worker_dir_name("host:w/1", 6067) == "id-host_w_1"
    assert worker_dir_name("..", 1) == "id-_.."
    rocksdb = Settings(store="rocksdb", data_dir=tmp_path, web_port=5001, app_id="orders")
    assert faust_datadir(rocksdb) == tmp_path / "orders" / "port-5001"
    assert faust_datadir(Settings(store="rocksdb", data_dir=tmp_path, app_id="..")).parent == tmp_path / "_.."
    assert faust_datadir(Settings(store="memory", data_dir=tmp_path, web_port=5001)) == tmp_path
    assert Settings(store="RocksDB").store == "rocksdb"


def test_rocksdb_without_rocksdict_is_a_startup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rocksdict", None)  # import rocksdict raises ImportError
    with pytest.raises(StartupError, match="SEQGUARD_STORE=rocksdb needs rocksdict"):
        faust_store(Settings(store="rocksdb"))
    assert faust_store(Settings(store="memory")) == "memory://"


async def test_the_decoded_cache_never_outlives_a_dropped_batch(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Aggregates stay decoded between batches (SEQGUARD_STATE_CACHE), but only as their record says."""
    h.write(b"a", 1, 2)
    await h.commit()
    decoded: list[bytes | None] = []
    monkeypatch.setattr("workers.processor.store.decode", lambda raw: decoded.append(raw) or decode(raw))
    changed = h.store.load(b"a", 1)  # a hit: not decoded
    assert decoded == [] and changed.agg.seq.next_seq == 2
    changed.agg.seq.next_seq = 9  # a batch changes it in place, then is dropped before it saves
    h.store.rollback()
    assert h.store.load(b"a", 1).agg.seq.next_seq == 2 and len(decoded) == 1
    saved = h.store.load(b"a", 1)
    saved.agg.seq.next_seq = 7
    h.store.save(saved)  # saved, then the flush is fenced: rolled back
    h.store.rollback()
    h.sink.discard()
    assert h.store.load(b"a", 1).agg.seq.next_seq == 2


async def test_the_decoded_cache_keeps_the_most_recently_used(h: Harness) -> None:
    h.store.cache_size = 2
    for key in (b"a", b"b", b"c"):
        h.write(key, 1, 3)
    assert list(h.store._decoded) == [b"b", b"c"]
    h.store.cache_size = 0
    h.write(b"d", 1, 3)
    assert b"d" not in h.store._decoded


async def test_the_sink_sends_closed_batches_that_do_not_linger(h: Harness) -> None:
    h.sink.add("output", 0, b"k", b"v", None, [])
    h.write(b"a", 1, 2)
    await h.commit()
    assert h.broker.closed_when_sent == [True, True]
