"""The latency floor of the broker: a process that only forwards, for phase (c') of ``benchmarks.throughput``.

    .venv/bin/python -m benchmarks.forwarder BOOTSTRAP INPUT OUTPUT FETCH_WAIT_MS

A plain aiokafka consumer (prefetch, the given fetch wait) assigned every partition of
INPUT from its end; each fetch's records go to the same partition of OUTPUT through
seqguard's Sink (one closed record batch per partition, their own timestamps), and the next
fetch waits for the broker's acknowledgements (acks=all), as a seqguard batch waits for its
output. No decoding, no order, no state, no second round trip: what any consumer that
writes its results pays on this broker. It prints ``ready`` once positioned, and runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from workers.kafka.sink import Sink


async def forward(bootstrap: str, source: str, target: str, fetch_wait_ms: int) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=fetch_wait_ms)
    # seqguard's own write path: one closed record batch per partition, acknowledged at flush
    sink = Sink(lambda: AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all"), state_topics=frozenset())
    await consumer.start()
    await sink.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        partitions = sorted(await sink.producer.partitions_for(source))
        consumer.assign([TopicPartition(source, p) for p in partitions])
        await consumer.seek_to_end()
        for tp in consumer.assignment():
            await consumer.position(tp)
        print("ready", flush=True)
        while not stop.is_set():
            for tp, records in (await consumer.getmany(timeout_ms=200)).items():
                for r in records:
                    sink.add(target, tp.partition, r.key, r.value, r.timestamp, list(r.headers))
            await sink.flush()
    finally:
        await consumer.stop()
        await sink.stop()


class Forwarder:
    """The forwarder as a child process, with a worker's ``proc``, ``ready`` and ``stop``."""

    def __init__(self, bootstrap: str, source: str, target: str, fetch_wait_ms: int, log: Path) -> None:
        self.log_path = log  # read like a worker's log (benchmarks.measure.worker_log_findings)
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.forwarder", bootstrap, source, target, str(fetch_wait_ms)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    async def ready(self, timeout: float = 60.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout)
        if line.strip() != "ready" or time.monotonic() > deadline:
            raise RuntimeError(f"the forwarder did not start ({line.strip()!r}); log: {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def main(argv: list[str] | None = None) -> int:
    bootstrap, source, target, fetch_wait = (argv if argv is not None else sys.argv[1:])[:4]
    asyncio.run(forward(bootstrap, source, target, int(fetch_wait)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
