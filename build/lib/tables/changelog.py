"""The shape shared by seqguard's Faust tables: raw aggregate-ID keys, JSON values."""

from __future__ import annotations

from typing import Any


def changelog_table(app: Any, name: str, partitions: int, help: str) -> Any:  # noqa: A002 - Faust's name
    """A changelog-backed table co-partitioned with the input topic.

    ``key_type=bytes`` makes Faust use the raw codec for keys; values are JSON.
    """
    return app.Table(name, partitions=partitions, key_type=bytes, help=help)
