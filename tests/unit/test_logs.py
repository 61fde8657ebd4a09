"""workers/logs.py: every record is one JSON object per line (or a console line), with the
standard fields; decision lines carry their fixed field set."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import mode
import pytest
import structlog

from tables.sequence import Parked
from tables.timers import Gap
from workers import logs
from workers.dlq.records import Failure
from workers.envelope import Envelope
from workers.records import InRecord
from workers.settings import Settings

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
SEVEN = ("event_id", "aggregate_id", "sequence", "event_type", "topic", "partition", "offset")
REC = InRecord("t.events", 2, 41, 1.0, b"build-123", b"{}", [])
ENV = Envelope("build-123-3", "ci", "build.progress", "build-123", 3, {})


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    """A stream to log to; logging, structlog and stdio as they were afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stdout, stderr = sys.stdout, sys.stderr
    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    stream = io.StringIO()
    yield stream
    root.handlers[:], root.level = handlers, level
    sys.stdout, sys.stderr = stdout, stderr
    sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
    logging.captureWarnings(False)
    structlog.reset_defaults()


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def standard(line: dict[str, Any], logger: str, level: str = "INFO") -> None:
    assert ISO_UTC.match(line["timestamp"]), line
    assert (line["level"], line["logger"], line["worker"]) == (level, logger, "w-1")
    assert list(line)[:5] == ["timestamp", "level", "logger", "event", "worker"]


def test_a_stdlib_line_is_one_json_object_with_the_standard_fields(out: io.StringIO) -> None:
    logs.configure("info", "json", worker="w-1", stream=out)
    logging.getLogger("seqguard.test").info("hello %s", "there")
    logging.getLogger("seqguard.test").debug("not at info")
    [line] = parsed(out)
    standard(line, "seqguard.test")
    assert line["event"] == "hello there"


def test_a_third_party_librarys_stdlib_logger_is_json_too(out: io.StringIO) -> None:
    logs.configure("INFO", "json", worker="w-1", stream=out)

    class Fetcher(mode.Service):
        pass

    Fetcher().log.warning("lagging by %d", 3)  # mode's CompositeLogger, as Faust's services log
    logging.getLogger("aiokafka.consumer.group_coordinator").info("Joined group %r", "g")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)  # py.warnings, captured
    lines = parsed(out)
    standard(lines[0], "tests.unit.test_logs", "WARNING")  # mode names the logger after the module
    assert lines[0]["event"].endswith("lagging by 3")
    standard(lines[1], "aiokafka.consumer.group_coordinator")
    assert lines[1]["event"] == "Joined group 'g'"
    standard(lines[2], "py.warnings", "WARNING")
    assert "deprecated thing" in lines[2]["event"]


def test_structlogs_own_loggers_render_their_keys_as_fields(out: io.StringIO) -> None:
    logs.configure("info", "json", worker="w-1", stream=out)
    structlog.get_logger("seqguard.native").info("paused", dependency="redis", seconds=1.5)
    [line] = parsed(out)
    standard(line, "seqguard.native")
    assert (line["event"], line["dependency"], line["seconds"]) == ("paused", "redis", 1.5)


def test_an_exception_is_a_field_of_its_one_line(out: io.StringIO) -> None:
    logs.configure("info", "json", worker="w-1", stream=out)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("seqguard.test").exception("batch failed")
        structlog.get_logger("seqguard.native").exception("sweep failed")
    assert len(out.getvalue().splitlines()) == 2
    first, second = parsed(out)
    standard(first, "seqguard.test", "ERROR")
    assert first["event"] == "batch failed"
    assert first["exception"].startswith("Traceback") and "ZeroDivisionError: division by zero" in first["exception"]
    assert "ZeroDivisionError" in second["exception"] and second["level"] == "ERROR"


def test_decision_lines_carry_the_fixed_fields(out: io.StringIO) -> None:
    logs.configure("info", "json", worker="w-1", stream=out)
    logs.decision("buffered", REC, ENV, next_expected=1)
    logs.dead_lettered(REC, Failure("handler_exception", "boom " * 200, 3, "build-123", 3, "build.progress", "e3"))
    logs.dead_lettered(REC, Failure("deserialization_failed", "not JSON"))
    logs.gap(b"build-123", 2, Gap(4, 6), "build.progress", cause="gap_timeout")
    logs.gap(b"build-123", 2, Parked(4, "gap", 1.0), "order.paid")
    buffered, failed, undecoded, skipped, parked = parsed(out)
    standard(buffered, "seqguard.decisions")
    assert {k: buffered[k] for k in SEVEN} == {
        "event_id": "build-123-3",
        "aggregate_id": "build-123",
        "sequence": 3,
        "event_type": "build.progress",
        "topic": "t.events",
        "partition": 2,
        "offset": 41,
    }
    assert (buffered["decision"], buffered["event"], buffered["next_expected"]) == ("buffered", "buffered", 1)
    assert (failed["level"], failed["error_class"], failed["attempts"]) == ("WARNING", "handler_exception", 3)
    assert len(failed["message"]) == 500 and "key" not in failed and failed["event_id"] == "e3"
    assert (undecoded["aggregate_id"], undecoded["key"], undecoded["offset"]) == (None, "build-123", 41)
    assert (skipped["decision"], skipped["sequence"], skipped["first"], skipped["last"]) == ("gap_skipped", 4, 4, 6)
    assert (skipped["topic"], skipped["partition"], skipped["cause"]) == (None, 2, "gap_timeout")
    assert (parked["decision"], parked["sequence"], parked["reason"], parked["event_type"]) == (
        "parked",
        4,
        "gap",
        "order.paid",
    )
    assert all(all(k in line for k in SEVEN) for line in (buffered, failed, undecoded, skipped, parked))


def test_the_short_way_for_decisions_renders_what_the_generic_chain_renders(
    out: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs.configure("info", "json", worker="w-1", stream=out)
    logs.decision("duplicate", REC, ENV, next_expected=4)  # queued (no event loop here: written at once)
    monkeypatch.setattr(logs, "_queue", None)  # as a LogRecord, through structlog's ProcessorFormatter
    logs.decision("duplicate", REC, ENV, next_expected=4)
    fast, generic = parsed(out)
    assert list(fast) == list(generic)
    assert {k: v for k, v in fast.items() if k != "timestamp"} == {k: v for k, v in generic.items() if k != "timestamp"}


async def test_decisions_are_written_once_per_loop_turn_and_before_any_other_line(out: io.StringIO) -> None:
    logs.configure("info", "json", worker="w-1", stream=out)
    logs.decision("buffered", REC, ENV)
    logs.decision("released", REC, ENV)
    assert out.getvalue() == ""  # queued until the loop turns
    await asyncio.sleep(0)
    assert [line["decision"] for line in parsed(out)] == ["buffered", "released"]
    logs.decision("duplicate", REC, ENV)
    logging.getLogger("seqguard.test").warning("after the duplicate")  # writes the queue first
    assert [line.get("decision", line["event"]) for line in parsed(out)][2:] == ["duplicate", "after the duplicate"]
    logs.decision("late", REC, ENV)
    logging.getLogger().handlers[0].close()  # as logging.shutdown does at exit: nothing queued is lost
    assert parsed(out)[-1]["decision"] == "late"


def test_decisions_follow_the_level(out: io.StringIO) -> None:
    logs.configure("warning", "json", worker="w-1", stream=out)
    logs.decision("buffered", REC, ENV)
    logs.decision("released", REC, ENV)
    logs.decision("late", REC, ENV, next_expected=9)
    assert [line["decision"] for line in parsed(out)] == ["late"]


def test_values_json_cannot_encode_still_give_a_json_line(out: io.StringIO) -> None:
    logs.configure("info", "json", worker="w-1", stream=out)
    logging.getLogger("x").info("odd", extra=logs.fields(by_key={b"raw": 1}, obj=object(), text="\udc80"))
    logs.decision("released", REC, ENV, odd={1: b"\xff"})
    odd, released = parsed(out)
    assert odd["by_key"] == "{b'raw': 1}" and odd["obj"].startswith("<object") and odd["text"] == "\udc80"
    assert out.getvalue().isascii()
    assert released["odd"] == {"1": "b'\\xff'"}


def test_console_mode_is_for_people(out: io.StringIO) -> None:
    logs.configure("info", "console", worker="w-1", stream=out)
    logs.decision("buffered", REC, ENV, next_expected=1)
    try:
        raise KeyError("gone")
    except KeyError:
        logging.getLogger("seqguard.test").exception("lookup failed")
    text = out.getvalue()
    first = text.splitlines()[0]
    assert not first.startswith("{")
    assert "buffered" in first and "aggregate_id=build-123" in first and "sequence=3" in first and "worker=w-1" in first
    assert "lookup failed" in text and "KeyError" in text and "Traceback" in text


def test_printed_output_and_uncaught_exceptions_become_json_lines(out: io.StringIO) -> None:
    logs.configure("info", "json", worker="w-1", stream=out, capture_stdio=True)
    print("from a handler")  # noqa: T201
    sys.stderr.write("half a ")
    sys.stderr.write("line\nand more\n")
    sys.stdout.write("no newline yet")
    sys.stdout.flush()
    try:
        raise RuntimeError("nobody caught me")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    thread = threading.Thread(target=lambda: 1 / 0, name="fetcher")
    thread.start()
    thread.join()
    logs.restore_stdio()
    lines = parsed(out)
    assert [(line["logger"], line["event"]) for line in lines[:4]] == [
        ("stdout", "from a handler"),
        ("stderr", "half a line"),
        ("stderr", "and more"),
        ("stdout", "no newline yet"),
    ]
    assert lines[1]["level"] == "WARNING"
    crash, in_thread = lines[4], lines[5]
    assert crash["level"] == "CRITICAL" and "RuntimeError: nobody caught me" in crash["exception"]
    assert "fetcher" in in_thread["event"] and "ZeroDivisionError" in in_thread["exception"]


def test_a_process_that_dies_of_an_uncaught_exception_writes_only_json() -> None:
    code = (
        "from workers import logs; logs.configure('info', 'json', worker='w-1', capture_stdio=True);"
        "import logging, sys; print('starting'); logging.getLogger('faust').info('up');"
        "sys.stderr.write('a warning printed\\n'); raise SystemError('the end')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == ""  # everything went to stdout, as log lines
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["event"] for line in lines] == ["starting", "up", "a warning printed", "uncaught exception"]
    assert "SystemError: the end" in lines[-1]["exception"]


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="json or console"):
        logs.configure("info", "xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown log level"):
        logs.configure("loud", "json")


def test_the_log_format_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().log_format == "json"
    monkeypatch.setenv("SEQGUARD_LOG_FORMAT", "console")
    assert Settings().log_format == "console"
    monkeypatch.setenv("SEQGUARD_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()
