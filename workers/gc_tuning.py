"""The garbage collector of a worker: frozen after start-up, and its old generation collected rarely.

Measured in a worker at 5,000 events/s (benchmarks.throughput with gc callbacks): CPython's
full collections came every second or so, took 70-185 ms each and found almost nothing (the
heap is modules, Faust, and aggregates' state: bytes, dicts and tuples without cycles). They
were the worker's p99 latency and a sixth of its CPU. So, as large Python services do
(Instagram's gc.freeze): everything alive after start-up goes to the permanent generation,
and the thresholds let young cycles die young while the old generation is scanned only
after ~100x more allocations than CPython's default.
"""

from __future__ import annotations

import gc

#: Young collections every 50,000 net allocations (CPython: 700), the middle one every 20 of
#: them, the old one every 100 middle ones (and CPython's own 25%-growth rule).
THRESHOLDS = (50_000, 20, 100)


def tune() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
