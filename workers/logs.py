"""Logs: one JSON object per line (or a console layout for people), and decision lines.

``configure`` puts one handler on the root logger whose structlog ``ProcessorFormatter``
renders every record: seqguard's, Faust's, mode's, aiokafka's, aiohttp's, structlog's own
loggers, warnings, uncaught exceptions and, with ``capture_stdio``, anything printed. Every
line has ``timestamp`` (ISO-8601 UTC), ``level``, ``logger``, ``event`` (the message) and
``worker``; an exception is an ``exception`` field.

``decision`` logs what the worker did with an event when that was not a plain in-order apply
(buffered, released, duplicate, late, gap_skipped, parked, dead_lettered, replayed,
resolved), always with the same fields, so that ``jq 'select(.aggregate_id=="build-123")'``
gives one aggregate's story in order. The in-order path never calls it. In JSON mode the
lines are queued and written together once per event-loop turn (``_JsonHandler``): ~3 µs of
worker CPU a line instead of ~30 µs as LogRecords.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Literal

import orjson
import structlog
from structlog.stdlib import ProcessorFormatter
from structlog.typing import EventDict, Processor, WrappedLogger

from tables.sequence import Parked
from tables.sequencer import Action, Decision, Verdict
from tables.timers import Gap, Refused, Resolved
from workers import logs_stdio
from workers.logs_stdio import restore_stdio  # noqa: F401 - tests undo the capture through logs

if TYPE_CHECKING:
    from workers.dlq.records import Failure
    from workers.envelope import Envelope
    from workers.records import InRecord
    from workers.settings import Settings

Format = Literal["json", "console"]
DECISIONS = logging.getLogger("seqguard.decisions")
_queue: _JsonHandler | None = None  # set by configure in JSON mode: decisions go to it
#: The LogRecord attribute a decision's fields travel in (a plain ``extra`` would spread them).
FIELDS = "seqguard_fields"
#: Decisions an operator should notice are warnings; the others are information. All show at INFO.
_LEVELS = {k: logging.WARNING for k in ("late", "parked", "gap_skipped", "dead_lettered")}
_FIRST = ("timestamp", "level", "logger", "event", "worker")
#: ASCII out: a message quoting a hostile record (a lone surrogate) can never fail to be written.
_encode = json.JSONEncoder(separators=(",", ":"), default=repr).encode


def _dumps(obj: dict[str, Any]) -> str:
    # orjson first (several times faster); a line it refuses (a lone surrogate, a huge int, a key
    # that is not a string) or that is not ASCII (json escapes it) goes through json, as before.
    try:
        out = orjson.dumps(obj, default=repr)
        if out.isascii():
            return out.decode()
    except (TypeError, orjson.JSONEncodeError):
        pass
    try:
        return _encode(obj)
    except (TypeError, ValueError):  # a key that is not a string, a cycle: the values' reprs
        return _encode({str(k): v if isinstance(v, str | int | float | None) else repr(v) for k, v in obj.items()})


def worker_name(settings: Settings) -> str:
    """The worker id of every line (as workers.app.worker_id, without importing Faust)."""
    return settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"


def configure(
    level: str | int,
    fmt: Format = "json",
    *,
    worker: str = "",
    stream: IO[str] | None = None,
    capture_stdio: bool = False,
) -> None:
    """Route every log record of the process through one JSON (or console) handler.

    ``stream``: where lines go (default: standard output as it is now). ``capture_stdio``:
    also turn what is printed to stdout/stderr into log lines, and log uncaught exceptions."""
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be json or console, not {fmt!r}")
    number = level if isinstance(level, int) else logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    out = stream if stream is not None else logs_stdio.original(sys.stdout)
    pre: list[Processor] = [_merge_fields]
    last: list[Processor] = [_Standard(worker, upper=fmt == "json")]
    if fmt == "json":
        last += [structlog.processors.format_exc_info, ProcessorFormatter.remove_processors_meta, _first_fields]
        last.append(structlog.processors.JSONRenderer(serializer=lambda ed, **_: _dumps(ed)))
    else:
        last += [ProcessorFormatter.remove_processors_meta, structlog.dev.ConsoleRenderer(colors=_isatty(out))]
    global _queue
    handler = _JsonHandler(out, worker) if fmt == "json" else logging.StreamHandler(out)
    handler.setFormatter(ProcessorFormatter(foreign_pre_chain=pre, processors=last))
    _queue = handler if isinstance(handler, _JsonHandler) else None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(number)
    logging.captureWarnings(True)
    structlog.reset_defaults()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    if capture_stdio:
        logs_stdio.capture_stdio()


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a stdlib log call whose values become fields of its line:
    ``log.info("...", extra=logs.fields(aggregate_id=...))``."""
    return {FIELDS: values}


# --------------------------------------------------------------------------- decisions


def decision(kind: str, rec: InRecord | None = None, env: Envelope | None = None, **more: Any) -> None:
    """One decision line: ``kind``, the event (``env``), where it was read (``rec``) and
    ``more`` fields (which may also set aggregate_id, sequence... when there is no envelope)."""
    level = _LEVELS.get(kind, logging.INFO)
    if not DECISIONS.isEnabledFor(level):
        return
    line: dict[str, Any] = {
        "decision": kind,
        "event_id": None if env is None else env.id,
        "aggregate_id": None if env is None else env.aggregate_id,
        "sequence": None if env is None else env.sequence,
        "event_type": None if env is None else env.type,
        "topic": None if rec is None else rec.topic,
        "partition": None if rec is None else rec.partition,
        "offset": None if rec is None else rec.offset,
    }
    if more:
        line.update(more)
    queue = _queue
    if queue is not None:
        queue.add(time.time(), level, kind, line)
    else:  # console, or logging set up by someone else: a record (makeRecord + handle: no caller lookup)
        DECISIONS.handle(DECISIONS.makeRecord(DECISIONS.name, level, "", 0, kind, (), None, extra={FIELDS: line}))


def decided(d: Decision, rec: InRecord, env: Envelope, next_expected: int | None, replayed_from: str | None) -> None:
    """What the core decided for an arriving event that is not in order, or that the DLQ replayed
    (``replayed`` first: its consequences follow it). Dead letters log themselves (``dead_lettered``)."""
    if replayed_from is not None and d.action is not Action.DRAIN_AND_RETRY:  # that one is decided again
        decision("replayed", rec, env, verdict=d.verdict.value, replayed_from=replayed_from)
    if d.verdict is Verdict.BUFFERED or d.verdict is Verdict.HELD:
        decision("buffered", rec, env, next_expected=next_expected, parked=d.verdict is Verdict.HELD)
    elif d.verdict is Verdict.DUPLICATE:
        decision("duplicate", rec, env, next_expected=next_expected)
    elif d.verdict is Verdict.LATE:
        decision("late", rec, env, next_expected=next_expected, applied=d.action is Action.RUN, reason=d.reason)


def resolved(rec: InRecord, env: Envelope, outcome: Resolved | Refused, request: dict[str, Any]) -> None:
    """An operator's resolve, carried out (``resolved``) or refused (a warning with the same fields)."""
    who = {"operator": str(request.get("operator", ""))[:200], "reason": str(request.get("reason", ""))[:1000]}
    if isinstance(outcome, Refused):
        extra = {FIELDS: {"aggregate_id": env.aggregate_id, "event_id": env.id, "refused": outcome.reason, **who}}
        logging.getLogger("seqguard.operator").warning("resolve of %s refused", env.aggregate_id, extra=extra)
        return
    skipped = None if outcome.gap is None else [outcome.gap.first, outcome.gap.last]
    dropped = [b.seq for b in outcome.dropped]
    done = {"skip_to": outcome.skip_to, "was_next": outcome.was_next, "skipped": skipped, "dropped": dropped}
    decision("resolved", rec, env, **done, **who)


def dead_lettered(rec: InRecord, failure: Failure) -> None:
    """A record sent to the DLQ. One that was not decoded has no aggregate: its Kafka ``key`` is given."""
    unknown = {} if failure.aggregate_id or rec.key is None else {"key": rec.key.decode("utf-8", "replace")[:512]}
    decision(
        "dead_lettered",
        rec,
        None,
        event_id=failure.event_id or None,
        aggregate_id=failure.aggregate_id or None,
        sequence=failure.sequence,
        event_type=failure.event_type or None,
        error_class=failure.error_class,
        message=failure.message[:500],
        attempts=failure.attempts,
        **unknown,
    )


def gap(key: bytes, partition: int, result: Gap | Parked, event_type: str, **more: Any) -> None:
    """A gap given up on (``gap_skipped``, first..last) or parked on (``parked`` at its first number)."""
    common: dict[str, Any] = {"aggregate_id": key.decode("utf-8", "replace"), "partition": partition, **more}
    if isinstance(result, Gap):
        first, last = result.first, result.last
        decision("gap_skipped", sequence=first, event_type=event_type or None, first=first, last=last, **common)
    else:
        decision("parked", sequence=result.seq, event_type=event_type or None, reason=result.reason, **common)


# --------------------------------------------------------------------------- rendering


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The JSON mode's one handler. It also writes the decision lines, which skip LogRecords:
    ``decision`` queues them, and they are written together, once per event-loop turn, or
    before any other line (so the file keeps the order things happened in). Measured in a
    worker: a decision as a LogRecord cost ~30 µs of CPU (record, handler and formatter code
    run cold between events); queued and written in a run, a few µs."""

    def __init__(self, stream: IO[str], worker: str) -> None:
        super().__init__(stream)
        self.worker = worker
        self.pending: list[tuple[float, int, str, dict[str, Any]]] = []
        self.scheduled = False

    def add(self, created: float, level: int, kind: str, line: dict[str, Any]) -> None:
        self.pending.append((created, level, kind, line))
        if not self.scheduled:
            self.scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.write_pending)
            except RuntimeError:  # no event loop in this thread: at once
                self.write_pending()

    def write_pending(self) -> None:
        self.scheduled = False
        n = len(self.pending)  # only the event loop's thread adds; others may write what is there
        if not n:
            return
        lines, worker = self.pending[:n], self.worker
        del self.pending[:n]
        text = "".join([_decision_line(t, level, kind, line, worker) for t, level, kind, line in lines])
        self.acquire()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # noqa: BLE001 - as logging does: report it, never raise into the worker
            self.handleError(logging.makeLogRecord({"msg": f"{n} decision lines", "name": DECISIONS.name}))
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending:
            self.write_pending()
        super().emit(record)

    def close(self) -> None:
        self.write_pending()
        super().close()


def _decision_line(created: float, level: int, kind: str, line: dict[str, Any], worker: str) -> str:
    """What the generic chain renders for a decision record, built at once."""
    head = {"timestamp": _iso(created), "level": logging.getLevelName(level), "logger": DECISIONS.name}
    head["event"], head["worker"] = kind, worker
    return _dumps({**head, **line}) + "\n"


def _merge_fields(logger: WrappedLogger, name: str, ed: EventDict) -> EventDict:
    record = ed.get("_record")
    fields = None if record is None else record.__dict__.get(FIELDS)
    if fields:
        ed.update(fields)
    return ed


class _Standard:
    """The standard fields, from the stdlib record both kinds of line have: ``timestamp`` (when
    the record was made, ISO-8601 UTC), ``level`` (Python's level name: upper case in JSON, as
    grep and the tests look for it; lower case for the console renderer's colours), ``logger``
    and ``worker``."""

    def __init__(self, worker: str, *, upper: bool) -> None:
        self.worker, self.upper = worker, upper

    def __call__(self, logger: WrappedLogger, name: str, ed: EventDict) -> EventDict:
        record: logging.LogRecord = ed["_record"]
        ed["timestamp"] = _iso(record.created)
        ed["level"] = record.levelname if self.upper else record.levelname.lower()
        ed["logger"] = record.name
        ed.setdefault("worker", self.worker)
        return ed


def _first_fields(logger: WrappedLogger, name: str, ed: EventDict) -> EventDict:
    """The standard fields first, in one order, for people reading the raw lines."""
    return {**{k: ed.pop(k) for k in _FIRST if k in ed}, **ed}


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def _iso(t: float) -> str:
    whole = int(t)
    cached = _second
    if cached[0] != whole:
        cached[1], cached[0] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)), whole
    return f"{cached[1]}.{int((t - whole) * 1_000_000):06d}Z"


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
