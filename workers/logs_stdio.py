"""stdout, stderr and uncaught exceptions as log records (``SEQGUARD_LOG_FORMAT=json``): a print,
a library's stray write or a crash in any thread becomes one line of the log (workers/logs.py)."""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import IO, Any


class _LogWriter(io.TextIOBase):
    """A stdout/stderr stand-in: each line written becomes a log record of ``logger``."""

    _writing = threading.local()

    def __init__(self, logger: logging.Logger, level: int, original: IO[str]) -> None:
        self.logger, self.level, self.original = logger, level, original
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def write(self, text: str) -> int:
        if getattr(self._writing, "active", False):  # a handler's own error report: no loop
            return self.original.write(text)
        with self._lock:
            *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._pending = self._pending, ""
        self._emit(line)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        self._writing.active = True
        try:
            self.logger.log(self.level, line.rstrip())
        finally:
            self._writing.active = False


def original(stream: IO[str]) -> IO[str]:
    return stream.original if isinstance(stream, _LogWriter) else stream


def capture_stdio() -> None:
    sys.stdout = _LogWriter(logging.getLogger("stdout"), logging.INFO, original(sys.stdout))
    sys.stderr = _LogWriter(logging.getLogger("stderr"), logging.WARNING, original(sys.stderr))
    crashes = logging.getLogger("seqguard.crash")

    def uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        crashes.critical("uncaught exception", exc_info=(kind, exc, tb))

    def in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not SystemExit:  # as threading's own hook: a thread may exit so
            exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
            crashes.critical("uncaught exception in thread %s", getattr(args.thread, "name", "?"), exc_info=exc_info)

    def unraisable(args: Any) -> None:
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        crashes.warning("%s: %r", args.err_msg or "exception ignored", args.object, exc_info=exc_info)

    sys.excepthook = uncaught
    threading.excepthook = in_thread
    sys.unraisablehook = unraisable


def restore_stdio() -> None:
    """Undo ``capture_stdio`` (tests)."""
    sys.stdout, sys.stderr = original(sys.stdout), original(sys.stderr)
    sys.excepthook, threading.excepthook, sys.unraisablehook = (
        sys.__excepthook__,
        threading.__excepthook__,
        sys.__unraisablehook__,
    )
