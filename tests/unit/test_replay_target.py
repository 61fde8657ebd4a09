"""Replay writes only into the input topic, whatever a DLQ record's headers claim.

A replayed record carries its original place in its own headers, so any producer of the input
topic can forge them (``seqguard-replayed-from`` plus ``seqguard-original-topic``). Pure: DLQ
records are built with ``dlq_headers`` and read back through a fake Kafka record; no broker.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.unit.test_dlq_records import FakeRecord
from workers.cli_dlq import resolve
from workers.dlq import records as r
from workers.dlq.records import DeadLetter, Failure, could_be_origin, dlq_headers, header
from workers.dlq.replay import target
from workers.errors import ERROR_CLASSES, FORGED_CONTROL
from workers.records import InRecord
from workers.settings import Settings

SETTINGS = Settings(app_id="shop", input_topic="shop.events", output_topic="shop.applied", partitions=8)
INPUT = SETTINGS.input_topic


FORGED_TOPICS = [
    SETTINGS.output_topic,
    SETTINGS.changelog_topic("state"),
    SETTINGS.dlq,
    SETTINGS.control_topic,
    SETTINGS.audit_topic,
    SETTINGS.markers_topic,
    "anything.else",
]


def stored(headers: list[tuple[str, bytes]]) -> DeadLetter:
    """A DLQ record as `dlq replay` reads it, with exactly these seqguard headers."""
    return DeadLetter.from_record(FakeRecord(SETTINGS.dlq, 0, 7, b"order-1", b"{}", headers))


def failed_on_input(headers: list[tuple[str, bytes]], *, partition: int = 3) -> DeadLetter:
    """The DLQ record the worker writes for an input record carrying ``headers``."""
    src = InRecord(INPUT, partition, 41, 1_700_000_000.0, b"order-1", b"{}", list(headers))
    fail = Failure("handler_exception", "boom", 3, "order-1", 2, "order.paid", "evt-2")
    built = dlq_headers(src, fail, worker_id="w", max_message=100, now=1000.0)
    return DeadLetter.from_record(FakeRecord(SETTINGS.dlq, 0, 7, src.key, src.value, built))


# --------------------------------------------------------------------------- target


@pytest.mark.parametrize("forged", FORGED_TOPICS)
def test_target_of_a_dlq_record_naming_another_topic_is_the_input_topic_routed_by_key(forged: str) -> None:
    letter = stored([(r.ORIGINAL_TOPIC, forged.encode()), (r.ORIGINAL_PARTITION, b"2")])
    assert target(letter, SETTINGS) == (INPUT, None)


@pytest.mark.parametrize("forged", FORGED_TOPICS)
def test_forged_replay_headers_on_an_input_record_do_not_move_its_replay(forged: str) -> None:
    letter = failed_on_input(
        [(r.REPLAYED_FROM, b"shop.events.dlq:0:1"), (r.ORIGINAL_TOPIC, forged.encode()), (r.ORIGINAL_PARTITION, b"6")]
    )
    # The claim is not believed: the DLQ record names the place the worker read it from.
    assert (letter.original_topic, letter.meta["original-partition"], letter.meta["original-offset"]) == (
        INPUT,
        "3",
        "41",
    )
    assert target(letter, SETTINGS) == (INPUT, 3)


def test_target_keeps_the_partition_of_a_record_first_read_from_the_input_topic() -> None:
    assert target(stored([(r.ORIGINAL_TOPIC, INPUT.encode()), (r.ORIGINAL_PARTITION, b"5")]), SETTINGS) == (INPUT, 5)


@pytest.mark.parametrize("partition", [b"8", b"99999", b"-1", b"x", b""])
def test_target_does_not_pin_a_partition_the_input_topic_does_not_have(partition: bytes) -> None:
    letter = stored([(r.ORIGINAL_TOPIC, INPUT.encode()), (r.ORIGINAL_PARTITION, partition)])
    assert target(letter, SETTINGS) == (INPUT, None)


def test_target_of_a_repartition_or_control_topic_record_is_the_input_topic_routed_by_key() -> None:
    for topic in (SETTINGS.repartition_topic, SETTINGS.control_topic):
        assert target(stored([(r.ORIGINAL_TOPIC, topic.encode()), (r.ORIGINAL_PARTITION, b"1")]), SETTINGS) == (
            INPUT,
            None,
        )


def test_target_of_a_record_without_origin_is_the_input_topic_routed_by_key() -> None:
    assert target(stored([]), SETTINGS) == (INPUT, None)


# --------------------------------------------------------------------------- claimed origin


def test_a_genuine_claim_is_the_topic_read_from_or_its_repartition_topic() -> None:
    assert could_be_origin(INPUT, INPUT)
    assert could_be_origin(SETTINGS.repartition_topic, INPUT)
    assert could_be_origin(SETTINGS.repartition_topic, SETTINGS.repartition_topic)
    for forged in FORGED_TOPICS:
        assert not could_be_origin(forged, INPUT)


def test_a_replayed_repartition_record_keeps_its_original_place() -> None:
    letter = failed_on_input(
        [
            (r.REPLAYED_FROM, b"shop.events.dlq:0:1"),
            (r.ORIGINAL_TOPIC, SETTINGS.repartition_topic.encode()),
            (r.ORIGINAL_PARTITION, b"2"),
            (r.ORIGINAL_OFFSET, b"8"),
        ]
    )
    assert (letter.original_topic, letter.meta["original-partition"], letter.meta["original-offset"]) == (
        SETTINGS.repartition_topic,
        "2",
        "8",
    )
    assert target(letter, SETTINGS) == (INPUT, None)


def test_replay_headers_of_a_forged_record_name_the_input_topic() -> None:
    letter = failed_on_input([(r.REPLAYED_FROM, b"x:0:1"), (r.ORIGINAL_TOPIC, SETTINGS.output_topic.encode())])
    assert header(letter.replay_headers(), r.ORIGINAL_TOPIC) == INPUT


# --------------------------------------------------------------------------- control topic, operator


def test_control_topic_is_derived_from_the_input_topic_unless_named() -> None:
    assert SETTINGS.control_topic == "shop.events.control"
    assert Settings(input_topic="in", control_topic_name="ops.commands").control_topic == "ops.commands"


def test_forged_control_is_an_error_class() -> None:
    assert FORGED_CONTROL == "forged_control" and FORGED_CONTROL in ERROR_CLASSES


def test_resolve_without_an_operator_is_refused_before_anything_is_sent(monkeypatch) -> None:
    monkeypatch.delenv("SEQGUARD_OPERATOR", raising=False)
    # An unreachable broker: the refusal must come before any connection attempt.
    monkeypatch.setenv("SEQGUARD_BROKER_URL", "kafka://127.0.0.1:1")
    for extra in ([], ["--operator", "  "]):
        result = CliRunner().invoke(resolve, ["ledger-1", "--skip-to", "3", "--reason", "r", *extra])
        assert result.exit_code == 2, result.output
        assert "--operator" in result.output and "SEQGUARD_OPERATOR" in result.output


def test_resolve_refuses_an_operator_name_the_audit_would_cut(monkeypatch) -> None:
    monkeypatch.setenv("SEQGUARD_BROKER_URL", "kafka://127.0.0.1:1")
    result = CliRunner().invoke(resolve, ["a", "--skip-to", "3", "--reason", "r", "--operator", "x" * 201])
    assert result.exit_code == 2 and "longer than 200" in result.output
