"""The gap clock of one source partition: stream time, and wall time only while idle.

A gap timeout asks "has the missing event had its chance to arrive?". Wall time answers
it wrongly whenever the worker could not have seen the event: while it was down, while
its tables recovered, while it read a backlog. So seqguard measures the wait like Flink's
watermarks with idleness (and Kafka Streams' ``PunctuationType.STREAM_TIME``), per
aggregate partition, over the topics that feed it (the input and its repartition topic):

* while a source lags behind its high-water mark, the clock is the slowest lagging
  source's stream time: the highest record timestamp consumed from it. A backlog is
  measured in the time its records were written, so an event behind the buffered one
  is read before the clock passes the buffered one plus the timeout;
* when every source is caught up (nothing more to read), the clock is the wall time of
  the fetch that found it so: whatever is missing is not in the log, and time passes
  for real;
* it never moves backwards, and it starts unknown after every assignment: it does not
  run while a partition is recovering or unassigned, and nothing times out until the
  worker has read the partition (or found it idle).

Record timestamps are capped at the wall time, so a producer whose clock runs ahead
cannot make gaps time out early. Pure: the binding passes the observations in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class PartitionClock:
    #: The clock, in seconds since the epoch; None until it can be known.
    time: float | None = None
    #: Source topic -> highest record timestamp consumed from it since the assignment.
    streams: dict[str, float] = field(default_factory=dict)

    def observe(self, source: str, timestamp: float | None, wall: float) -> float:
        """A record consumed from ``source``; returns when its wait begins on this clock.

        That is its own timestamp, or the clock if the clock is past it (a replayed or a
        slow record): an event never starts out having waited already.
        """
        ts = wall if timestamp is None else min(timestamp, wall)
        if ts > self.streams.get(source, float("-inf")):
            self.streams[source] = ts
        return ts if self.time is None else max(ts, self.time)

    def advance(self, complete_at: Mapping[str, float | None], wall: float) -> float | None:
        """Move the clock on and return it. ``complete_at`` maps each source to the wall time
        of the last fetch that found it read to its end, or None while it lags.

        Each source bounds the clock by the time up to which it is known complete: a caught-up
        source by that fetch's time (anything it delivers later was written after it), a
        lagging one by the newest record read from it (unknown if none: no time passes).
        """
        bounds = [self.streams.get(source) if at is None else at for source, at in complete_at.items()]
        if None in bounds:
            return self.time
        target = min((b for b in bounds if b is not None), default=wall)
        target = min(target, wall)
        if self.time is None or target > self.time:
            self.time = target
        return self.time
