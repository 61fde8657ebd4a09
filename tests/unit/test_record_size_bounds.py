"""Every changelog record stays under Kafka's default 1 MB message limit, whatever the input."""

from __future__ import annotations

import pytest

from tables.seen import SeenIds
from tables.state import FIXED_BYTES, Aggregate, encode
from workers.envelope import MAX_ATTRIBUTE_CHARS, decode, encode_structured
from workers.errors import DecodeError


def test_seen_ids_trimmed_to_bytes_keep_the_newest() -> None:
    seen = SeenIds()
    for i in range(1000):
        seen.add(f"source\x1f{i:0500d}", float(i), max_ids=10_000)
    dropped = seen.trim_to_bytes(100_000)
    assert dropped > 0
    assert len(encode(Aggregate(seen=seen))) <= 100_000 + FIXED_BYTES
    assert list(seen.ids)[-1].endswith(f"{999:0500d}")  # the newest survive


def test_an_emoji_heavy_key_counts_by_its_encoded_bytes_not_its_characters() -> None:
    seen = SeenIds()
    seen.add("s\x1f" + "\U0001f600" * 1000, 0.0, max_ids=10)
    assert seen.nbytes >= 4000  # 1000 characters, 4000 bytes
    assert len(encode(Aggregate(seen=seen))) <= seen.nbytes + FIXED_BYTES


def test_seen_ids_under_the_budget_are_untouched() -> None:
    seen = SeenIds({"a": 1.0, "b": 2.0})
    assert seen.trim_to_bytes(1_000) == 0 and len(seen) == 2


@pytest.mark.parametrize("attribute", ["id", "source", "type", "partitionkey"])
def test_overlong_identity_attributes_are_rejected(attribute: str) -> None:
    attrs = {"id": "1", "source": "s", "type": "t", "sequence": 1, attribute: "x" * (MAX_ATTRIBUTE_CHARS + 1)}
    headers, value = encode_structured(attrs)
    with pytest.raises(DecodeError, match="longer than"):
        decode(b"agg", value, headers)


def test_identity_attributes_at_the_limit_are_accepted() -> None:
    headers, value = encode_structured({"id": "i" * MAX_ATTRIBUTE_CHARS, "source": "s", "type": "t", "sequence": 1})
    assert decode(b"agg", value, headers).id == "i" * MAX_ATTRIBUTE_CHARS
