"""Table recovery's seek of changelog partitions, for an offset Faust does not know.

Faust's Recovery (checked against faust-streaming 0.15.3) keeps the offset it read each
changelog partition up to in a Counter, entered as None for a partition with nothing
persisted (``Recovery._add``) until ``_build_offsets`` asks the broker. When a rebalance
assigns a standby partition in a recovery round that does not build its offsets, the None
reaches ``_seek_offsets``, which maps only -1 ("nothing read") to offset 0, and aiokafka's
``seek`` raises ValueError("Offset must be a positive integer"). Recovery crashed and the
worker exited (seen once in about fifteen runs of test_chaos, on a standby partition after
the rebalances a SIGKILL started).

Here an unknown or negative offset is read as -1: the partition is read from its start,
which is what Faust does for a partition with nothing persisted. Recovery only re-applies
the changelog's values in order, so reading more of it changes nothing but time.
"""

from __future__ import annotations

import logging
from typing import Any

from faust.tables import recovery as faust_recovery

log = logging.getLogger(__name__)


def install() -> None:
    cls = faust_recovery.Recovery
    if getattr(cls, "_seqguard_seek_patched", False):
        return
    seek_offsets = cls._seek_offsets

    async def seek_known(self: Any, consumer: Any, tps: Any, offsets: Any, title: str) -> None:
        unknown = {tp for tp in tps if not _known(offsets.get(tp))}
        if unknown:
            log.warning(
                "%s changelog partitions without a known offset, read from their start: %s", title, sorted(unknown)
            )
            offsets = {tp: -1 if tp in unknown else offsets[tp] for tp in tps}
        await seek_offsets(self, consumer, tps, offsets, title)

    cls._seqguard_faust_seek_offsets = seek_offsets  # type: ignore[attr-defined]  # the tests' contrast
    cls._seek_offsets = seek_known  # type: ignore[method-assign]
    cls._seqguard_seek_patched = True  # type: ignore[attr-defined]


def _known(offset: Any) -> bool:
    return type(offset) is int and offset >= -1  # noqa: E721 - Faust's -1 is "nothing read yet"
