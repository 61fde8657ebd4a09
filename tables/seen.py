"""Recently seen (applied) event IDs per aggregate, bounded by a TTL, a count and bytes."""

from __future__ import annotations

#: Upper bound of one entry's encoded size beyond its key: a MessagePack str header (<= 5)
#: and a float64 (9). Exact sizes are checked by tests/unit/test_state_record.py.
ENTRY_OVERHEAD = 14


def key_bytes(key: str) -> int:
    return len(key.encode()) + ENTRY_OVERHEAD


class SeenIds:
    """Insertion-ordered map of idempotency key -> time applied, and its encoded size.

    Python dicts keep insertion order, so the oldest entries are first: trimming
    by count, bytes or age pops from the front and never scans what it keeps.
    """

    __slots__ = ("ids", "nbytes")

    def __init__(self, ids: dict[str, float] | None = None) -> None:
        self.ids: dict[str, float] = ids if ids is not None else {}
        # map/len rather than key_bytes per key: this runs at every decode of a state record
        self.nbytes = sum(map(len, map(str.encode, self.ids))) + ENTRY_OVERHEAD * len(self.ids)

    def __contains__(self, key: str) -> bool:
        return key in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeenIds) and list(self.ids.items()) == list(other.ids.items())

    def __repr__(self) -> str:
        return f"SeenIds({self.ids!r})"

    def add(self, key: str, now: float, max_ids: int) -> None:
        if key in self.ids:
            del self.ids[key]  # re-adding moves the key to the end: the order stays by age
        else:
            self.nbytes += key_bytes(key)
        self.ids[key] = now
        while len(self.ids) > max_ids:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        key = next(iter(self.ids))
        del self.ids[key]
        self.nbytes -= key_bytes(key)

    def trim_to_bytes(self, max_bytes: int) -> int:
        """Forget the oldest IDs until the encoded entries fit in ``max_bytes``; return how many went."""
        dropped = 0
        while self.nbytes > max_bytes and self.ids:
            self._drop_oldest()
            dropped += 1
        return dropped

    def prune(self, now: float, ttl: float) -> int:
        """Forget IDs applied more than ``ttl`` seconds ago; return how many went."""
        dropped = 0
        for at in list(self.ids.values()):
            if now - at <= ttl:
                break
            self._drop_oldest()
            dropped += 1
        return dropped
