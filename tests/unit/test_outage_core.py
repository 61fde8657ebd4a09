"""After a handler failed (tables.outage): retry, wait for a dependency, or dead-letter; and
the backoff both use. Pure: examples, then properties over any failure sequence."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tables.outage import Backoff, Fault, Next, Step, after_failure

RETRY = Backoff(0.1, 2.0)
OUTAGE = Backoff(0.1, 5.0)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: An outage of days at the cap (5 s) is ~100,000 waits of one event.
LONG_OUTAGE = 100_000


def step(fault: Fault, attempt: int = 1, attempts: int = 3, *, down: bool = False, waits: int = 1) -> Step:
    return after_failure(fault, attempt, attempts, dependency_down=down, waits=waits, retry=RETRY, outage=OUTAGE)


# --- examples ---------------------------------------------------------------------------


def test_backoff_doubles_from_its_base_up_to_its_cap() -> None:
    assert [OUTAGE.delay(t) for t in range(1, 10)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert Backoff(0.1, 5.0).delay(0) == Backoff(0.1, 5.0).delay(-3) == 0.1  # tries counts from 1
    assert Backoff(0.0, 5.0).delay(7) == 0.0


def test_an_error_is_retried_with_backoff_then_dead_lettered() -> None:
    assert step(Fault.ERROR, 1, 3) == Step(Next.RETRY, RETRY.delay(1))
    assert step(Fault.ERROR, 2, 3) == Step(Next.RETRY, RETRY.delay(2))
    assert step(Fault.ERROR, 3, 3) == Step(Next.DEAD_LETTER)
    assert step(Fault.ERROR, 1, 1) == Step(Next.DEAD_LETTER)


@pytest.mark.parametrize("down", [False, True])
def test_a_permanent_failure_is_dead_lettered_at_once_even_in_an_outage(down: bool) -> None:
    assert step(Fault.PERMANENT, 1, 3, down=down, waits=4) == Step(Next.DEAD_LETTER)


def test_an_outage_waits_on_the_outage_backoff_past_the_last_attempt() -> None:
    assert step(Fault.OUTAGE, 3, 3, waits=1) == Step(Next.WAIT, OUTAGE.delay(1))
    assert step(Fault.OUTAGE, 3, 3, waits=9) == Step(Next.WAIT, 5.0)
    assert step(Fault.ERROR, 3, 3, down=True, waits=2) == Step(Next.WAIT, OUTAGE.delay(2))


@pytest.mark.parametrize("tries", [1_024, 1_025, 5_000, LONG_OUTAGE])
def test_a_long_outage_keeps_waiting_at_the_cap(tries: int) -> None:
    """(base * 2 ** (tries - 1) once raised OverflowError from the 1025th wait: an int too
    large for a float. The event was then set aside as processing_failed.)"""
    assert OUTAGE.delay(tries) == 5.0
    assert step(Fault.OUTAGE, 1, 3, waits=tries) == Step(Next.WAIT, 5.0)


# --- properties ---------------------------------------------------------------------------

delays = st.floats(0, 60, allow_nan=False, allow_infinity=False)
backoffs = st.builds(Backoff, base=delays, cap=delays)
tries = st.integers(1, LONG_OUTAGE)
faults = st.sampled_from(Fault)


@SETTINGS
@given(b=backoffs, t=tries)
def test_backoff_is_monotone_and_capped(b: Backoff, t: int) -> None:
    d = b.delay(t)
    assert 0 <= d <= b.cap
    assert b.delay(t + 1) >= d
    assert b.delay(1) == min(b.cap, b.base)


@SETTINGS
@given(b=backoffs, t=st.integers(1, 30))
def test_backoff_doubles_until_the_cap_and_then_stays_there(b: Backoff, t: int) -> None:
    d = b.delay(t)
    assert b.delay(t + 1) == min(b.cap, 2 * d)
    if b.base > 0 and b.cap <= b.base * 2**30:
        assert b.delay(31) == b.delay(LONG_OUTAGE) == b.cap


@SETTINGS
@given(
    attempt=st.integers(1, 20),
    attempts=st.integers(1, 20),
    down=st.booleans(),
    waits=tries,
    retry=backoffs,
    outage=backoffs,
)
def test_permanent_always_dead_letters(
    attempt: int, attempts: int, down: bool, waits: int, retry: Backoff, outage: Backoff
) -> None:
    got = after_failure(
        Fault.PERMANENT, attempt, attempts, dependency_down=down, waits=waits, retry=retry, outage=outage
    )
    assert got == Step(Next.DEAD_LETTER)


@SETTINGS
@given(
    fault=st.sampled_from([Fault.OUTAGE, Fault.ERROR]),
    attempt=st.integers(1, 50),
    attempts=st.integers(1, 50),
    down=st.booleans(),
    waits=tries,
    retry=backoffs,
    outage=backoffs,
)
def test_an_outage_or_a_dependency_down_always_waits_on_the_outage_backoff(
    fault: Fault, attempt: int, attempts: int, down: bool, waits: int, retry: Backoff, outage: Backoff
) -> None:
    got = after_failure(fault, attempt, attempts, dependency_down=down, waits=waits, retry=retry, outage=outage)
    if fault is Fault.OUTAGE or down:
        assert got == Step(Next.WAIT, outage.delay(waits))
    elif attempt < attempts:
        assert got == Step(Next.RETRY, retry.delay(attempt))
    else:
        assert got == Step(Next.DEAD_LETTER)


@SETTINGS
@given(
    failures=st.lists(st.tuples(faults, st.booleans()), min_size=1, max_size=60),
    attempts=st.integers(1, 6),
)
def test_driven_as_the_runner_does_waits_never_use_up_attempts(
    failures: list[tuple[Fault, bool]], attempts: int
) -> None:
    """The loop of HandlerRunner.run over a sequence of failures (fault, a dependency down):
    the event is dead-lettered only by a permanent failure, or by its ``attempts``-th error
    while every dependency answers; however many outage waits came before."""
    attempt, waits, errors = 1, 0, 0
    for fault, down in failures:
        s = after_failure(fault, attempt, attempts, dependency_down=down, waits=waits + 1, retry=RETRY, outage=OUTAGE)
        if fault is not Fault.PERMANENT and (fault is Fault.OUTAGE or down):
            assert s == Step(Next.WAIT, OUTAGE.delay(waits + 1))
            waits += 1
            continue
        if fault is Fault.ERROR:
            errors += 1
        if s.next is Next.DEAD_LETTER:
            assert fault is Fault.PERMANENT or errors == attempts
            return  # the event leaves for the DLQ
        assert s == Step(Next.RETRY, RETRY.delay(attempt))
        attempt += 1
        assert attempt == errors + 1 <= attempts
