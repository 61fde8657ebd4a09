"""Hostile records: none may crash or stop the worker.

Each one ends in the DLQ with a class, the worker stays up, and good events around it in the
same record batch (before and after it) are applied. tests/integration/test_bad_input.py has
the other kinds of bad input; tests/unit/test_envelope.py the decoder's contract.

Header keys are Strings in the Kafka protocol, but any bytes can be written. aiokafka 0.14
decodes them as strict UTF-8 while it unpacks a fetch, and a key that is not UTF-8 used to
crash Faust's fetcher (the worker exited 1, on every restart); workers/kafka/patches.py reads
such a batch again with surrogateescape. The first tests here need no broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchBuilderPy
from aiokafka.structs import TopicPartition

from tests.harness import Deployment, Worker, consume_all, event
from workers.envelope import STRUCTURED_CONTENT_TYPE, encode_binary
from workers.kafka import patches

CE = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
#: A header that is not UTF-8, on the good events and on some hostile ones: carried untouched.
OPAQUE = ("x-opaque", b"\xff\xfe\x00raw")
ENV = {
    "SEQGUARD_DERIVE_MISSING_IDS": "false",
    # Above the 200 kB nesting bomb (so the JSON parser meets it), below the 1 MiB record.
    "SEQGUARD_MAX_EVENT_BYTES": "500000",
}


class WireKey(str):
    """A header key whose bytes on the wire are ``raw``, UTF-8 or not. aiokafka's pure-Python batch
    builder writes what ``encode`` returns; its Cython builder and ``producer.send`` take only str."""

    raw: bytes

    def __new__(cls, raw: bytes) -> WireKey:
        key = super().__new__(cls, raw.decode("utf-8", "surrogateescape"))
        key.raw = raw
        return key

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def raw_batch(records: list, *, codec: int = 0, base_offset: int = 0) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(2, codec, 0, -1, -1, 0, 1 << 24)
    for i, (key, headers, value) in enumerate(records):
        builder.append(i, 1_700_000_000_000 + i, key, value, headers)
    data = bytes(builder.build())
    return base_offset.to_bytes(8, "big") + data[8:]


def fetched(data: bytes) -> list[Any]:
    """The records aiokafka's fetcher hands out for one partition's fetch response, as patched."""
    records = patches._Records(data)
    return list(patches._PartitionRecords(TopicPartition("t", 0), records, None, 0, None, None, True, 0))


def with_bad_key(aggregate: str = "a") -> list:
    """Three events of one aggregate; the second carries a header key that is not UTF-8."""
    first, second, third = (event(aggregate, s, "note") for s in (1, 2, 3))
    return [first, (second[0], [*second[1], (WireKey(b"x-\xff\xfe"), b"v")], second[2]), third]


# --------------------------------------------------------------------------- the record reader, no broker


def test_stock_aiokafka_refuses_a_header_key_that_is_not_utf8() -> None:
    """Why the patch exists (aiokafka 0.14.0): if this stops raising, the patch may go."""
    with pytest.raises(UnicodeDecodeError):
        list(DefaultRecordBatch(raw_batch(with_bad_key())))


@pytest.mark.parametrize("codec", [0, 1], ids=["uncompressed", "gzip"])
def test_patched_fetch_hands_out_every_record_of_a_batch_with_a_bad_header_key(codec: int) -> None:
    sent = with_bad_key()
    got = fetched(raw_batch(sent, codec=codec, base_offset=40))
    assert [r.offset for r in got] == [40, 41, 42]
    assert [(r.key, r.value) for r in got] == [(k, v) for k, _, v in sent]
    assert got[1].headers[-1] == ("x-\udcff\udcfe", b"v")
    assert got[1].headers[-1][0].encode("utf-8", "surrogateescape") == b"x-\xff\xfe"  # lossless
    assert [list(r.headers) for r in (got[0], got[2])] == [sent[0][1], sent[2][1]]


def test_the_fallback_reader_reads_what_aiokafkas_reader_reads() -> None:
    sent = [event("a", 1, "note"), (None, [("n", None), OPAQUE], None), (b"k", [], b"")]
    data = raw_batch(sent, codec=1, base_offset=7)
    fast = [(r.offset, r.timestamp, r.timestamp_type, r.key, r.value, r.headers) for r in DefaultRecordBatch(data)]
    ours = [(r.offset, r.timestamp, r.timestamp_type, r.key, r.value, r.headers) for r in patches.read_batch(data)]
    assert ours == fast


def test_an_unreadable_batch_is_logged_critical_and_raised(caplog: pytest.LogCaptureFixture) -> None:
    data = bytearray(raw_batch([event("a", 1, "note")], codec=1))
    data[-8:] = b"\x00" * 8  # the gzip trailer: decompression fails (the CRC is not checked here)
    with caplog.at_level(logging.CRITICAL), pytest.raises(Exception):  # noqa: B017 - gzip's error
        list(patches._Records(bytes(data)).next_batch())
    assert any(r.levelno == logging.CRITICAL and "cannot be read" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- hostile records through a worker


def structured(sequence: Any = 1, **attrs: Any) -> bytes:
    body = {"specversion": "1.0", "id": "h", "source": "t", "type": "note", "sequence": sequence, **attrs}
    return json.dumps(body).encode()


def with_sequence(raw: bytes) -> bytes:
    return structured(1).replace(b'"sequence": 1', b'"sequence": ' + raw)


def hostile() -> dict[str, tuple[bytes | None, list, bytes | None]]:
    """name -> (key, headers, value) of a record that must be dead-lettered as deserialization_failed."""
    bin_headers, bin_value = encode_binary({"id": "b", "source": "t", "type": "note", "sequence": 1, "data": {}})
    bad_ce = [(k, b"\xff\xfe" if k == "ce_id" else v) for k, v in bin_headers]
    nested = b"[" * 100_000 + b"]" * 100_000
    return {
        "header-key-not-utf8": (b"h1", [*CE, (WireKey(b"x-\xff\xfe"), OPAQUE[1])], structured()),
        "ce-header-key-not-utf8": (b"h2", [*bin_headers, (WireKey(b"ce_\xff"), b"1")], bin_value),
        "ce-header-value-not-utf8": (b"h3", [*bad_ce, OPAQUE], bin_value),
        "empty-value": (b"h4", CE, b""),
        "tombstone": (b"h5", CE, None),
        "no-key": (None, [*CE, OPAQUE], structured()),
        "one-mebibyte": (b"h7", CE, structured(data={"pad": "x" * (1 << 20)})),
        "sequence-negative": (b"h8", CE, with_sequence(b"-3")),
        "sequence-bool": (b"h9", CE, with_sequence(b"true")),
        "sequence-integral-float": (b"h10", CE, with_sequence(b"2.0")),
        "sequence-overflowing-float": (b"h11", CE, with_sequence(b"1e400")),
        "sequence-5000-digits": (b"h12", CE, with_sequence(b"9" * 5000)),
        "data-nested-100k-deep": (b"h13", CE, structured()[:-1] + b', "data": ' + nested + b"}"),
    }


def good(aggregate: str, sequence: int) -> tuple[bytes, list, bytes]:
    key, headers, value = event(aggregate, sequence, "note")
    return key, [*headers, OPAQUE], value


async def send_raw_batch(producer: AIOKafkaProducer, topic: str, partition: int, records: list) -> int:
    """``records`` as one record batch built by aiokafka's pure-Python builder (the only one that
    writes a header key that is not UTF-8); returns the batch's base offset."""
    batch = producer.create_batch()
    batch._builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, 0, 1 << 24)  # private: see WireKey
    for key, headers, value in records:
        assert batch.append(key=key, value=value, timestamp=None, headers=headers) is not None
    return (await (await producer.send_batch(batch, topic, partition=partition))).offset


async def test_hostile_records_are_dead_lettered_and_the_worker_goes_on(broker, redis_url) -> None:
    deployment = Deployment(broker.url, redis_url, extra=ENV)
    await deployment.create_topics()
    settings = deployment.settings()
    cases = hostile()
    partitions = list(range(settings.partitions))
    worker = Worker(deployment, "hostile")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await worker.ready()
        expected: dict[tuple[int, int], str] = {}
        for name, record in cases.items():
            # In one batch: a good event, the hostile record, the next good event, all in the
            # partition of the good events' aggregate.
            partition = DefaultPartitioner()(f"ok-{name}".encode(), partitions, partitions)
            base = await send_raw_batch(
                producer, settings.input_topic, partition, [good(f"ok-{name}", 1), record, good(f"ok-{name}", 2)]
            )
            expected[(partition, base + 1)] = name
        out = await consume_all(broker.bootstrap, settings.output_topic, expect=2 * len(cases), timeout=90)
        dlq = await consume_all(broker.bootstrap, settings.dlq, expect=len(cases), timeout=30)
        assert worker.proc.poll() is None, f"the worker must survive hostile records: {worker.tail()}"
    finally:
        await producer.stop()
        worker.stop()

    applied = sorted((r.key.decode(), json.loads(r.value)["sequence"]) for r in out)
    assert applied == sorted((f"ok-{name}", s) for name in cases for s in (1, 2))
    assert all(OPAQUE in list(r.headers) for r in out), "a header value that is not UTF-8 is carried untouched"
    letters = {}
    for r in dlq:
        meta = {k: v.decode() for k, v in r.headers if k.startswith("seqguard-")}
        place = (int(meta["seqguard-original-partition"]), int(meta["seqguard-original-offset"]))
        letters[expected[place]] = (r, meta)
    assert set(letters) == set(cases)
    for name, (r, meta) in letters.items():
        assert meta["seqguard-error-class"] == "deserialization_failed", (name, meta)
        key, headers, value = cases[name]
        assert (r.key, r.value) == (key, value), name  # the original key and value, untouched
    bad_key, meta = letters["header-key-not-utf8"]
    assert ("x-\\xff\\xfe", OPAQUE[1]) in list(bad_key.headers)  # the key's bytes escaped, the value untouched
    assert "header key 'x-\\\\xff\\\\xfe' is not UTF-8" in meta["seqguard-error-message"]
    assert OPAQUE in list(letters["ce-header-value-not-utf8"][0].headers)
    assert "exceeds the limit" in letters["one-mebibyte"][1]["seqguard-error-message"]
    assert "not usable JSON" in letters["data-nested-100k-deep"][1]["seqguard-error-message"]


async def test_a_record_without_key_and_value_is_dead_lettered(broker, redis_url) -> None:
    deployment = Deployment(broker.url, redis_url, extra=ENV)
    await deployment.create_topics()
    settings = deployment.settings()
    worker = Worker(deployment, "null-null")
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await worker.ready()
        await send_raw_batch(producer, settings.input_topic, 0, [(None, CE, None), good("after", 1)])
        deadline = time.monotonic() + 30
        dlq: list = []
        while not dlq and worker.proc.poll() is None and time.monotonic() < deadline:
            dlq = await consume_all(broker.bootstrap, settings.dlq, quiet=1)
            await asyncio.sleep(0.2)
        assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}"
        assert [(r.key, r.value) for r in dlq] == [(None, None)]
        assert await consume_all(broker.bootstrap, settings.output_topic, expect=1, timeout=30)
    finally:
        await producer.stop()
        worker.stop()
