"""One exception root. Each error says whether it is permanent, transient, an outage or critical.

* permanent: a business failure; dead-letter now, retrying cannot help (bad input, invalid transition).
* transient: retry in place with backoff, then dead-letter (a handler's own flakiness).
* outage (TransientError): a dependency is down; the event waits where it is and is retried,
  without limit, until the dependency is back. Never dead-lettered (workers/processor/runner.py).
* critical: stop the worker without acknowledging anything (the broker lost a write).
"""

from __future__ import annotations

from typing import ClassVar

#: The error classes recorded with every dead-lettered event (the DLQ header value).
DESERIALIZATION_FAILED = "deserialization_failed"
SCHEMA_INVALID = "schema_invalid"
HANDLER_EXCEPTION = "handler_exception"
TIMEOUT_EXCEEDED = "timeout_exceeded"
ORDER_VIOLATION = "order_violation"
BUFFER_OVERFLOW = "buffer_overflow"
#: An operator command where none may come from (the input or repartition topic), or a record
#: of the control topic that is not a well-formed operator command.
FORGED_CONTROL = "forged_control"
#: The same idempotency key came with a different payload (workers/ledger): flagged, never skipped.
IDEMPOTENCY_CONFLICT = "idempotency_conflict"
#: Anything else that went wrong with one record (a bug met by unusual input): the record is
#: set aside rather than stopping the worker on it at every restart.
PROCESSING_FAILED = "processing_failed"
ERROR_CLASSES = (
    DESERIALIZATION_FAILED,
    SCHEMA_INVALID,
    HANDLER_EXCEPTION,
    TIMEOUT_EXCEEDED,
    ORDER_VIOLATION,
    BUFFER_OVERFLOW,
    FORGED_CONTROL,
    IDEMPOTENCY_CONFLICT,
    PROCESSING_FAILED,
)


class SeqguardError(Exception):
    error_class: ClassVar[str] = HANDLER_EXCEPTION
    permanent: ClassVar[bool] = False
    critical: ClassVar[bool] = False
    #: An infrastructure failure: retried in place until the dependency is back.
    outage: ClassVar[bool] = False


class DecodeError(SeqguardError):
    """The record is not a usable CloudEvent (not UTF-8, not JSON, missing attributes...)."""

    error_class = DESERIALIZATION_FAILED
    permanent = True


class SchemaInvalid(SeqguardError):
    """The event's data fails its model, or names a schema version nobody knows."""

    error_class = SCHEMA_INVALID
    permanent = True


class PermanentError(SeqguardError):
    """Raised by a handler to dead-letter its event at once, without retries."""

    error_class = HANDLER_EXCEPTION
    permanent = True


class InvalidTransition(PermanentError):
    """A domain state machine refused an event (e.g. shipped before paid)."""


class IdempotencyConflict(PermanentError):
    """An effect's idempotency key was used before with a different payload."""

    error_class = IDEMPOTENCY_CONFLICT


class TransientError(SeqguardError):
    """Raised by a handler when a dependency it needs is unavailable (an API answering 503, a
    database restarting): the event waits and is retried until it succeeds, never dead-lettered."""

    outage = True

    def __init__(self, message: str = "", dependency: str = "handler") -> None:
        super().__init__(message or f"{dependency} is unavailable")
        self.dependency = dependency


class DependencyDown(TransientError):
    """Redis or PostgreSQL could not be reached (refused, reset, timed out)."""


class HandlerTimeout(SeqguardError):
    error_class = TIMEOUT_EXCEEDED


class CriticalError(SeqguardError):
    """The worker cannot go on safely (a produce to the DLQ or a changelog failed)."""

    critical = True


class StartupError(CriticalError):
    """A dependency (Kafka, Redis) could not be reached at start-up."""
