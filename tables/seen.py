"""Recently seen (applied) event IDs per aggregate, bounded by a TTL and a count."""

from __future__ import annotations

from typing import Any

from tables.changelog import changelog_table


class SeenIds:
    """Insertion-ordered map of idempotency key -> time applied.

    Python dicts keep insertion order, so the oldest entries are first: trimming
    by count or age pops from the front and never scans what it keeps.
    """

    __slots__ = ("ids",)

    def __init__(self, ids: dict[str, float] | None = None) -> None:
        self.ids: dict[str, float] = ids if ids is not None else {}

    def __contains__(self, key: str) -> bool:
        return key in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, key: str, now: float, max_ids: int) -> None:
        self.ids.pop(key, None)  # re-adding moves the key to the end: the order stays by age
        self.ids[key] = now
        while len(self.ids) > max_ids:
            del self.ids[next(iter(self.ids))]

    def trim_to_bytes(self, max_bytes: int, per_entry: int = 32) -> int:
        """Forget the oldest IDs until their JSON form (key + ~``per_entry`` bytes each) fits."""
        size = sum(len(key) + per_entry for key in self.ids)
        dropped = 0
        while size > max_bytes and self.ids:
            key = next(iter(self.ids))
            del self.ids[key]
            size -= len(key) + per_entry
            dropped += 1
        return dropped

    def prune(self, now: float, ttl: float) -> int:
        """Forget IDs applied more than ``ttl`` seconds ago; return how many went."""
        dropped = 0
        for key, at in list(self.ids.items()):
            if now - at <= ttl:
                break
            del self.ids[key]
            dropped += 1
        return dropped

    def to_json(self) -> dict[str, float]:
        return self.ids

    @classmethod
    def from_json(cls, data: Any) -> SeenIds:
        return cls(dict(data) if data else {})


def seen_table(app: Any, name: str, partitions: int) -> Any:
    """The changelog-backed Faust table: aggregate ID -> {idempotency key: applied at}."""
    return changelog_table(app, name, partitions, "Recently applied event IDs per aggregate")
