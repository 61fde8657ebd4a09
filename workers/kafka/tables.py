"""Faust table internals seqguard reads: which source partition holds each key."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any


def key_partitions(table: Any) -> MutableMapping[bytes, int]:
    """Key -> changelog partition, as Faust's memory store keeps it (``_key_partition``).

    The store fills it while it recovers the changelog and drops a partition's keys when
    the partition moves away; seqguard sets it for the keys it writes itself.
    """
    mapping: MutableMapping[bytes, int] = table.data._key_partition
    return mapping
