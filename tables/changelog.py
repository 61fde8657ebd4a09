"""The changelog-backed Faust table that holds each aggregate's state record."""

from __future__ import annotations

from typing import Any

STATE_TABLE = "state"


def state_table(app: Any, partitions: int, name: str = STATE_TABLE) -> Any:
    """Aggregate ID -> its encoded state record (tables.state), co-partitioned with the input.

    ``key_type=bytes``/``value_type=bytes`` make Faust use the raw codec both ways: the
    worker encodes the record itself (tables.state), once per aggregate per batch.
    """
    return app.Table(
        name,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        help="Per-aggregate state: sequence, parking, seen IDs and reorder buffer in one record",
    )
