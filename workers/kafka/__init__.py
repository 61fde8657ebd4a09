"""Every use of Faust's and aiokafka's private names, behind one entry point: ``install``.

seqguard changes three things inside faust-streaming's aiokafka driver (``patches``: the
fetch wait and the changelog-end probe; ``delivery``: records of the ordered topics go from
the fetch to the processor in batches), makes aiokafka's fetcher fetch when the worker
asks (``fetch_demand``), records aiokafka's heartbeat confirmations (``lease``), reads its
per-partition fetch state (``progress``), lets table recovery seek a changelog partition
whose offset it does not know (``recovery_seek``); ``tables`` reads one private attribute of Faust's
memory store, and ``rocks`` its RocksDB store's partition databases and offset key. Private
names change without notice between releases, so ``install`` first checks that the installed
versions are exactly the ones the patches were written and tested against, and refuses to
start otherwise.

Importing this package does not import Faust: the operator CLI and the tests use
``workers.kafka.topics``, ``read`` and ``embedded`` without it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.errors import StartupError

if TYPE_CHECKING:
    from workers.kafka.clients import Kafka
    from workers.kafka.delivery import Delivery

#: The versions the patches were written against (pinned in pyproject.toml).
EXPECTED_VERSIONS = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

#: The one attribute seqguard sets on a Faust app: its Hooks.
_ATTRIBUTE = "seqguard_hooks"


@dataclass
class Hooks:
    """What the patched Faust classes need from seqguard, found from the consumer's app."""

    delivery: Delivery
    #: aiokafka's fetch wait; Faust fixes 1500 ms, the embedded broker's latency floor.
    fetch_max_wait_ms: int | None = None
    #: Fetch only when the worker asks for records (workers/kafka/fetch_demand.py); False: prefetch.
    fetch_on_demand: bool = False
    #: Where (and how) the changelog-end probe connects; None trusts ListOffsets "latest".
    bootstrap: Kafka | None = None


def check_versions(version: Callable[[str], str] = importlib.metadata.version) -> None:
    """Raise StartupError unless every patched package is installed at its expected version."""
    wrong = []
    for package, expected in EXPECTED_VERSIONS.items():
        try:
            found = f"{version(package)} is installed"
        except importlib.metadata.PackageNotFoundError:
            found = "is not installed"
        if found != f"{expected} is installed":
            wrong.append(f"{package} {found}, seqguard's patches were written for {expected}")
    if wrong:
        raise StartupError(
            "; ".join(wrong) + ". The patches replace private Faust/aiokafka methods (workers/kafka/): "
            "install the pinned versions, or check each patch against the new release and update the pins."
        )


def install(app: Any, hooks: Hooks) -> None:
    """Check the versions, patch the Faust classes (once per process) and attach ``hooks`` to ``app``."""
    check_versions()
    from workers.kafka import delivery, fetch_demand, lease, patches, recovery_seek

    patches.install()
    patches.IN_RECORD_TOPICS.update(hooks.delivery.topics)
    fetch_demand.install()
    delivery.install()
    lease.install()
    recovery_seek.install()
    setattr(app, _ATTRIBUTE, hooks)  # noqa: B010 - Faust's App has no slot of ours


def hooks_of(app: Any) -> Hooks | None:
    """The app's Hooks; None for an app seqguard did not install (Faust's own paths then)."""
    hooks: Hooks | None = getattr(app, _ATTRIBUTE, None)
    return hooks
