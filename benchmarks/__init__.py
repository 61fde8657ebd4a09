"""Benchmarks: run against the embedded broker, never part of the test suite.

* ``python -m benchmarks.throughput``: the consumer floor, seqguard's throughput, end-to-end latency.
* ``python -m benchmarks.envelope_cost``: decoding cost of workers.envelope vs the cloudevents SDK.
* ``python -m benchmarks.ledger``: the effect ledger (once vs once_each) and PostgreSQL projections, and
  worker throughput with each on vs off.
* ``benchmarks/profile_worker.sh PID``: py-spy profile of a running worker.
"""
