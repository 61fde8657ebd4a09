"""The processor under faults, with its real Sink and StateStore over an in-memory table and
a producer that records what reaches "the broker": a batch the write fence closes on
writes nothing and leaves memory as the changelog has it; a record whose processing
raises is set aside in the DLQ, and the batch goes on."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.producer.message_accumulator import BatchBuilder

from tables.policy import PolicyBook
from tests.harness import event
from workers.handlers import Registry
from workers.kafka.sink import Sink
from workers.metrics import Metrics
from workers.processor.batch import OrderedProcessor
from workers.processor.store import StateStore
from workers.records import InRecord
from workers.settings import Settings

SETTINGS = Settings()
CHANGELOG = "app-state-changelog"


class Producer:
    """What the Sink calls of AIOKafkaProducer; ``sent``: topic -> one entry per record sent."""

    def __init__(self) -> None:
        self.sent: dict[str, list[Any]] = {}

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(1 << 20, 0)

    async def send_batch(self, builder: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future[Any]:
        self.sent.setdefault(topic, []).extend([partition] * builder.record_count())
        return _done()

    async def send(self, topic: str, value: Any, **_: Any) -> asyncio.Future[Any]:
        self.sent.setdefault(topic, []).append(value)
        return _done()

    async def start(self) -> None: ...


def _done() -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(SimpleNamespace(offset=0))  # aiokafka's RecordMetadata (the Sink reads its offset)
    return fut


class Data(dict):  # type: ignore[type-arg]
    """Faust's memory store: a dict with the key -> partition map seqguard reads."""

    def __init__(self) -> None:
        super().__init__()
        self._key_partition: dict[bytes, int] = {}
        self.data = self  # Faust's store keeps its dict in .data (a FastUserDict)


class Table:
    def __init__(self) -> None:
        self.data = Data()
        self.changelog_topic = type("T", (), {"get_topic_name": staticmethod(lambda: CHANGELOG)})()


def processor(registry: Registry) -> tuple[OrderedProcessor, Producer, Table]:
    producer, table = Producer(), Table()
    sink = Sink(lambda: producer, state_topics=frozenset({CHANGELOG}))  # type: ignore[arg-type,return-value]
    store = StateStore(table, sink)
    p = OrderedProcessor(SETTINGS, store, sink, registry, None, Metrics.create(), PolicyBook(), "w1")
    return p, producer, table


def record(aggregate: str, seq: int, offset: int, event_type: str = "t.applied") -> InRecord:
    key, headers, value = event(aggregate, seq, event_type)
    return InRecord(SETTINGS.input_topic, 0, offset, 1_700_000_000.0, key, value, list(headers))


async def test_a_fenced_batch_writes_nothing_and_memory_stays_as_the_changelog_has_it() -> None:
    registry = Registry()
    p, producer, table = processor(registry)
    assert await p.process_batch([record("a", 1, 0)])
    before = dict(table.data)
    sent_before = {topic: list(values) for topic, values in producer.sent.items()}
    closed: dict[str, Any] = {"why": None, "frozen": False}

    @registry.handler("t.freeze")
    async def freeze(event: Any, data: Any, ctx: Any) -> None:
        if not closed["frozen"]:  # frozen here past the session timeout, the first time
            closed.update(why="the group membership lease ran out", frozen=True)

    batch = [record("a", 2, 1, "t.freeze"), record("a", 3, 2), record("b", 2, 3)]
    assert not await p.process_batch(batch, lambda: closed["why"])
    assert producer.sent == sent_before  # no output, no DLQ, no state
    assert dict(table.data) == before  # "a" is still at 2, "b" unknown: read again, applied then
    closed["why"] = None
    assert await p.process_batch(batch, lambda: closed["why"])
    assert len(producer.sent[SETTINGS.output_topic]) == 3  # a1, a2, a3 (b waits for its 1)


async def test_a_batch_fenced_between_effects_and_state_leaves_state_behind_its_effects() -> None:
    p, producer, table = processor(Registry())
    # first half of the flush, second half (an event with no handler asks no fence: it has no effect)
    checks = iter([None, "a rebalance began"])
    assert not await p.process_batch([record("a", 1, 0)], lambda: next(checks))
    assert len(producer.sent[SETTINGS.output_topic]) == 1  # the effect went out: re-emitted later
    assert CHANGELOG not in producer.sent and dict(table.data) == {}  # state never ran ahead of it


async def test_a_record_whose_processing_raises_is_set_aside_and_the_batch_goes_on() -> None:
    p, producer, _ = processor(Registry())
    original = p._receive

    async def explode_on_b(loaded: Any, env: Any, rec: InRecord) -> None:
        if env.aggregate_id == "b":
            raise RuntimeError("a bug met by unusual input")
        await original(loaded, env, rec)

    p._receive = explode_on_b  # type: ignore[method-assign]
    assert await p.process_batch([record("b", 1, 0), record("a", 1, 1)])
    assert len(producer.sent[SETTINGS.output_topic]) == 1  # a1 applied after b1 failed
    assert len(producer.sent[SETTINGS.dlq]) == 1
    dlq_class = p.metrics.dead_lettered.labels("processing_failed", "other")._value.get()
    assert dlq_class == 1
