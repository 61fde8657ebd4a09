"""Finding disorder in any CloudEvents topic: the pure scanner behind ``seqguard scan``.

The binding (workers/cli_scan.py) reads a topic and feeds one ``Observation`` per decoded
record, each partition in its Kafka order (partitions may interleave), and
``Scanner.undecodable`` for a record that does not decode. What is judged, per aggregate:

* **out of order**: an event whose sequence is lower than the highest sequence already read
  for its aggregate *on the same partition*, and whose id is not a duplicate. Order exists
  only within one partition's log: seqguard keys by aggregate, so an aggregate's records on
  several partitions is a finding of its own (``partitions``), and there the records of
  each partition are judged on their own.
* **duplicates**: an idempotency key (``source`` + ``id``, as the worker's seen-IDs) read
  before for the same aggregate. Like the worker, the scanner skips a duplicate: it neither
  raises the highest sequence nor fills a gap. The same key in two aggregates is two events
  to seqguard, and not counted. When copies sit on different partitions, which copy is "the
  duplicate" (and so whether the first is out of order) depends on the read order across
  partitions; the count of duplicates does not.
* **conflicts**: a new id carrying a number another id already holds (the worker
  dead-letters it as an order violation). It can count as out of order too.
* **gaps**: numbers missing between the lowest and the highest number read, as inclusive
  ranges, computed once all is read from the sorted numbers (not the range: a hole of 10^15
  numbers costs one step).
* events without a ``sequence`` are counted (``unsequenced``): the worker applies them
  unordered; they are deduplicated but are no finding.

Memory is bounded per aggregate by what it has: one 16-byte digest per distinct idempotency
key, one int per distinct number, the highest number per partition it is on, and at most
``MAX_EXAMPLES`` examples. Undecodable records are counted by reason; the first
``MAX_LISTED_UNDECODABLE`` are listed with their place.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Examples (places in the log) kept per aggregate, for the operator to look at.
MAX_EXAMPLES = 5
#: Undecodable records listed with their place (all are counted).
MAX_LISTED_UNDECODABLE = 1_000

OUT_OF_ORDER = "out_of_order"
DUPLICATE = "duplicate"
CONFLICT = "conflict"


@dataclass(frozen=True, slots=True)
class Observation:
    """One decoded record, as the scanner needs it."""

    aggregate_id: str
    sequence: int | None
    event_id: str  # the idempotency key (workers.envelope.Envelope.idempotency_key)
    partition: int
    offset: int
    timestamp: float | None = None  # seconds


@dataclass(frozen=True, slots=True)
class Example:
    """Where a finding is: the record's place, its number, and the highest read before it."""

    kind: str  # OUT_OF_ORDER, DUPLICATE or CONFLICT
    sequence: int | None
    partition: int
    offset: int
    timestamp: float | None
    highest_before: int | None


@dataclass(slots=True)
class _Tally:
    count: int = 0
    unsequenced: int = 0
    out_of_order: int = 0
    duplicates: int = 0
    conflicts: int = 0
    ids: set[bytes] = field(default_factory=set)
    numbers: set[int] = field(default_factory=set)
    highest: dict[int, int] = field(default_factory=dict)  # partition -> highest number read there
    partitions: set[int] = field(default_factory=set)
    examples: list[Example] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AggregateReport:
    aggregate_id: str
    count: int
    unsequenced: int
    first_sequence: int | None  # the lowest number read
    last_sequence: int | None  # the highest number read
    out_of_order: int
    duplicates: int
    conflicts: int
    gaps: tuple[tuple[int, int], ...]  # missing numbers, inclusive ranges, ascending
    partitions: tuple[int, ...]
    examples: tuple[Example, ...]

    @property
    def missing(self) -> int:
        return sum(last - first + 1 for first, last in self.gaps)

    @property
    def split(self) -> bool:
        """Seen on several partitions: seqguard keys by aggregate, so this is a finding."""
        return len(self.partitions) > 1

    @property
    def findings(self) -> int:
        return self.out_of_order + self.duplicates + self.conflicts + self.missing + int(self.split)

    def to_dict(self) -> dict[str, Any]:
        return {
            "aggregate_id": self.aggregate_id,
            "events": self.count,
            "unsequenced": self.unsequenced,
            "first_sequence": self.first_sequence,
            "last_sequence": self.last_sequence,
            "out_of_order": self.out_of_order,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "missing": self.missing,
            "gaps": [list(g) for g in self.gaps],
            "partitions": list(self.partitions),
            "examples": [
                {
                    "kind": e.kind,
                    "sequence": e.sequence,
                    "partition": e.partition,
                    "offset": e.offset,
                    "timestamp": e.timestamp,
                    "highest_before": e.highest_before,
                }
                for e in self.examples
            ],
        }


@dataclass(frozen=True, slots=True)
class Undecodable:
    partition: int
    offset: int
    reason: str
    error: str


@dataclass(frozen=True, slots=True)
class Totals:
    aggregates: int = 0
    events: int = 0
    out_of_order: int = 0
    duplicates: int = 0
    conflicts: int = 0
    missing: int = 0
    gap_ranges: int = 0
    split_aggregates: int = 0
    unsequenced: int = 0
    undecodable: int = 0
    aggregates_with_findings: int = 0

    @property
    def findings(self) -> bool:
        return bool(
            self.out_of_order
            or self.duplicates
            or self.conflicts
            or self.missing
            or self.split_aggregates
            or self.undecodable
        )


@dataclass(frozen=True, slots=True)
class Report:
    totals: Totals
    #: Aggregates with findings (and clean ones if asked), most findings first.
    aggregates: tuple[AggregateReport, ...]
    undecodable_by_reason: dict[str, int]
    undecodable: tuple[Undecodable, ...]  # the first MAX_LISTED_UNDECODABLE

    @property
    def findings(self) -> bool:
        return self.totals.findings


def gaps_of(numbers: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Missing numbers between the lowest and the highest, as inclusive ranges (one pass over
    the sorted numbers: the size of a hole costs nothing)."""
    out: list[tuple[int, int]] = []
    previous: int | None = None
    for n in sorted(numbers):
        if previous is not None and n > previous + 1:
            out.append((previous + 1, n - 1))
        previous = n
    return tuple(out)


def _digest(key: str) -> bytes:
    # A fixed 16 bytes per id, whatever its length (ids may be 512 characters each).
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


_DIGITS = re.compile(r"(?<![\w-])\d+(?!\w)")  # not the 8 of UTF-8


def reason_of(message: str) -> str:
    """A decode error's message without its particulars: the part before ': ', digits as N."""
    return _DIGITS.sub("N", message.split(": ", 1)[0])[:120]


class Scanner:
    """Feed ``observe`` (and ``undecodable``) in log order per partition; then ``report``."""

    def __init__(self) -> None:
        self._tallies: dict[str, _Tally] = {}
        self._undecodable: Counter[str] = Counter()
        self._listed: list[Undecodable] = []

    def observe(self, obs: Observation) -> None:
        tally = self._tallies.get(obs.aggregate_id)
        if tally is None:
            tally = self._tallies[obs.aggregate_id] = _Tally()
        tally.count += 1
        tally.partitions.add(obs.partition)
        digest = _digest(obs.event_id)
        seq = obs.sequence
        highest = tally.highest.get(obs.partition)
        if digest in tally.ids:
            tally.duplicates += 1
            self._example(tally, DUPLICATE, obs, highest)
            return
        tally.ids.add(digest)
        if seq is None:
            tally.unsequenced += 1
            return
        if highest is not None and seq < highest:
            tally.out_of_order += 1
            self._example(tally, OUT_OF_ORDER, obs, highest)
        if seq in tally.numbers:
            tally.conflicts += 1
            self._example(tally, CONFLICT, obs, highest)
        tally.numbers.add(seq)
        if highest is None or seq > highest:
            tally.highest[obs.partition] = seq

    @staticmethod
    def _example(tally: _Tally, kind: str, obs: Observation, highest: int | None) -> None:
        if len(tally.examples) < MAX_EXAMPLES:
            tally.examples.append(Example(kind, obs.sequence, obs.partition, obs.offset, obs.timestamp, highest))

    def undecodable(self, partition: int, offset: int, error: str) -> None:
        reason = reason_of(error)
        self._undecodable[reason] += 1
        if len(self._listed) < MAX_LISTED_UNDECODABLE:
            self._listed.append(Undecodable(partition, offset, reason, error[:300]))

    def aggregate(self, aggregate_id: str) -> AggregateReport | None:
        tally = self._tallies.get(aggregate_id)
        return None if tally is None else _report_of(aggregate_id, tally)

    def _reports(self) -> Iterator[AggregateReport]:
        for aggregate_id, tally in self._tallies.items():
            yield _report_of(aggregate_id, tally)

    def report(self, *, include_clean: bool = False) -> Report:
        """The findings so far. Clean aggregates count in the totals; listed only if asked."""
        listed: list[AggregateReport] = []
        t: dict[str, int] = Counter()
        for agg in self._reports():
            t["events"] += agg.count
            t["out_of_order"] += agg.out_of_order
            t["duplicates"] += agg.duplicates
            t["conflicts"] += agg.conflicts
            t["missing"] += agg.missing
            t["gap_ranges"] += len(agg.gaps)
            t["split_aggregates"] += int(agg.split)
            t["unsequenced"] += agg.unsequenced
            t["aggregates_with_findings"] += int(agg.findings > 0)
            if include_clean or agg.findings:
                listed.append(agg)
        listed.sort(key=lambda a: (-a.findings, a.aggregate_id))
        totals = Totals(aggregates=len(self._tallies), undecodable=sum(self._undecodable.values()), **t)
        return Report(totals, tuple(listed), dict(self._undecodable.most_common()), tuple(self._listed))


def _report_of(aggregate_id: str, tally: _Tally) -> AggregateReport:
    numbers = tally.numbers
    return AggregateReport(
        aggregate_id=aggregate_id,
        count=tally.count,
        unsequenced=tally.unsequenced,
        first_sequence=min(numbers) if numbers else None,
        last_sequence=max(numbers) if numbers else None,
        out_of_order=tally.out_of_order,
        duplicates=tally.duplicates,
        conflicts=tally.conflicts,
        gaps=gaps_of(numbers),
        partitions=tuple(sorted(tally.partitions)),
        examples=tuple(tally.examples),
    )


# --------------------------------------------------------------------------- --since


class SinceGate:
    """Which records a ``--since`` scan takes: per partition, none before the first record at or
    after the time, every one from it on (Kafka's ``offsets_for_times`` semantics). Where the
    broker's offset lookup is exact (Kafka) nothing is skipped; where it answers too early (the
    embedded broker answers the partition's start) the gate skips what precedes."""

    def __init__(self, since: float | None) -> None:
        self.since = since
        self._open: set[int] = set()
        self.skipped = 0

    def admit(self, partition: int, timestamp: float | None) -> bool:
        if self.since is None or partition in self._open:
            return True
        if timestamp is not None and timestamp >= self.since:
            self._open.add(partition)
            return True
        self.skipped += 1
        return False
