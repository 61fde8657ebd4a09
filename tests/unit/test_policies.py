"""Policy files (TOML and JSON) and the DLQ agent's pure decisions: one contract per test.

Pure: policy files are written to tmp_path; the agent's ``due`` and
``auto_replayable`` are called with hand-built dead letters and a plain float ``now``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tables.policy import Policy
from workers.dlq import records as r
from workers.dlq.agent import auto_replayable, due
from workers.dlq.records import DeadLetter
from workers.policy_file import PolicyFile, policy_book, read_policy_file
from workers.settings import Settings


def settings(**over) -> Settings:
    fields = {
        "default_ordering": "ordered",
        "gap_timeout": 30.0,
        "gap_policy": "skip",
        "start_policy": "from_one",
        "dlq_auto_replay": "",
    }
    fields.update(over)
    return Settings(**fields)


def toml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(text)
    return path


def json_file(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "policies.json"
    path.write_text(json.dumps(doc))
    return path


def letter(
    error: str = "timeout_exceeded", event_type: str = "order.paid", *, replays: int = 0, last_failure: float = 100.0
) -> DeadLetter:
    headers = [(r.ERROR_CLASS, error.encode()), (r.EVENT_TYPE, event_type.encode()),
               (r.REPLAY_COUNT, str(replays).encode()), (r.LAST_FAILURE, f"{last_failure:.3f}".encode())]  # fmt: skip
    return DeadLetter(
        "seqguard.events.dlq", 0, 0, b"k", b"{}", headers, {k[len(r.PREFIX) :]: v.decode() for k, v in headers}
    )


# --------------------------------------------------------------------------- defaults


def test_without_a_policy_file_every_type_gets_the_settings_defaults() -> None:
    book = policy_book(
        settings(default_ordering="warn", gap_timeout=5.0, gap_policy="park", dlq_auto_replay="timeout_exceeded")
    )
    assert book.for_type("anything") == Policy("warn", 5.0, "park", frozenset({"timeout_exceeded"}))
    assert book.by_type == {}


def test_start_policy_comes_from_settings() -> None:
    assert policy_book(settings(start_policy="from_first_seen")).start == "from_first_seen"


def test_strict_default_ordering_forces_park() -> None:
    assert policy_book(settings(default_ordering="strict", gap_policy="skip")).default.gap_policy == "park"


def test_auto_replay_classes_from_settings_are_trimmed_and_split() -> None:
    book = policy_book(settings(dlq_auto_replay=" timeout_exceeded , handler_exception,,"))
    assert book.default.auto_replay == frozenset({"timeout_exceeded", "handler_exception"})


def test_unknown_auto_replay_class_in_settings_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"auto_replay names unknown error classes: \['timeout'\]"):
        policy_book(settings(dlq_auto_replay="timeout"))


# --------------------------------------------------------------------------- files


def test_toml_file_sets_a_type_policy(tmp_path: Path) -> None:
    path = toml_file(
        tmp_path,
        '[types."order.paid"]\nordering = "warn"\ngap_timeout = 10\ngap_policy = "park"\nauto_replay = ["timeout_exceeded"]\n',
    )
    book = policy_book(settings(policy_file=path))
    assert book.for_type("order.paid") == Policy("warn", 10.0, "park", frozenset({"timeout_exceeded"}))


def test_json_file_sets_a_type_policy(tmp_path: Path) -> None:
    path = json_file(
        tmp_path,
        {"types": {"order.paid": {"ordering": "unordered", "gap_timeout": 2.5, "auto_replay": ["schema_invalid"]}}},
    )
    book = policy_book(settings(policy_file=path))
    assert book.for_type("order.paid") == Policy("unordered", 2.5, "skip", frozenset({"schema_invalid"}))


def test_types_the_file_does_not_name_get_the_defaults(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[types."order.paid"]\nordering = "warn"\n')
    book = policy_book(settings(policy_file=path, gap_timeout=7.0))
    assert book.for_type("order.created") == book.default == Policy("ordered", 7.0, "skip", frozenset())


def test_fields_a_type_leaves_out_come_from_settings(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[types."order.paid"]\ngap_timeout = 3\n')
    book = policy_book(
        settings(policy_file=path, default_ordering="warn", gap_policy="park", dlq_auto_replay="timeout_exceeded")
    )
    assert book.for_type("order.paid") == Policy("warn", 3.0, "park", frozenset({"timeout_exceeded"}))


def test_an_empty_auto_replay_list_turns_auto_replay_off_for_the_type(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[types."order.paid"]\nauto_replay = []\n')
    book = policy_book(settings(policy_file=path, dlq_auto_replay="timeout_exceeded"))
    assert (book.for_type("order.paid").auto_replay, book.default.auto_replay) == (
        frozenset(),
        frozenset({"timeout_exceeded"}),
    )


def test_strict_in_the_file_forces_park_even_if_the_file_says_skip(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[types."order.paid"]\nordering = "strict"\ngap_policy = "skip"\n')
    assert policy_book(settings(policy_file=path)).for_type("order.paid").gap_policy == "park"


def test_strict_in_the_file_forces_park_over_the_settings_gap_policy(tmp_path: Path) -> None:
    path = json_file(tmp_path, {"types": {"order.paid": {"ordering": "strict"}}})
    assert policy_book(settings(policy_file=path, gap_policy="skip")).for_type("order.paid").gap_policy == "park"


def test_non_strict_type_keeps_skip(tmp_path: Path) -> None:
    path = json_file(tmp_path, {"types": {"order.paid": {"ordering": "ordered", "gap_policy": "skip"}}})
    assert policy_book(settings(policy_file=path, gap_policy="park")).for_type("order.paid").gap_policy == "skip"


def test_unknown_auto_replay_class_in_the_file_is_rejected(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[types."order.paid"]\nauto_replay = ["timeout_exceeded", "flaky"]\n')
    with pytest.raises(ValueError, match=r"auto_replay names unknown error classes: \['flaky'\]"):
        policy_book(settings(policy_file=path))


def test_unknown_key_in_a_type_is_rejected(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[types."order.paid"]\nordring = "strict"\n')
    with pytest.raises(ValidationError, match="ordring"):
        read_policy_file(path)


def test_unknown_top_level_key_is_rejected(tmp_path: Path) -> None:
    path = json_file(tmp_path, {"types": {}, "defaults": {"ordering": "strict"}})
    with pytest.raises(ValidationError, match="defaults"):
        read_policy_file(path)


def test_unknown_ordering_is_rejected(tmp_path: Path) -> None:
    path = json_file(tmp_path, {"types": {"order.paid": {"ordering": "sorted"}}})
    with pytest.raises(ValidationError, match="ordering"):
        read_policy_file(path)


def test_unknown_gap_policy_is_rejected(tmp_path: Path) -> None:
    path = json_file(tmp_path, {"types": {"order.paid": {"gap_policy": "wait"}}})
    with pytest.raises(ValidationError, match="gap_policy"):
        read_policy_file(path)


def test_non_positive_gap_timeout_is_rejected(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[types."order.paid"]\ngap_timeout = 0\n')
    with pytest.raises(ValidationError, match="gap_timeout"):
        read_policy_file(path)


def test_an_empty_file_names_no_types(tmp_path: Path) -> None:
    assert read_policy_file(toml_file(tmp_path, "")) == PolicyFile(types={})


def test_a_file_that_is_not_toml_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Invalid"):  # tomllib.TOMLDecodeError is a ValueError
        read_policy_file(toml_file(tmp_path, "types = {{"))


def test_a_json_file_that_is_not_json_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "policies.json"
    path.write_text('[types."order.paid"]\n')
    with pytest.raises(ValueError, match="Expecting value"):  # json.JSONDecodeError is a ValueError
        read_policy_file(path)


# --------------------------------------------------------------------------- agent: due


def test_a_first_failure_is_due_after_the_base_delay() -> None:
    assert due(letter(last_failure=100.0), now=110.0, base_delay=10.0)


def test_a_first_failure_is_not_due_before_the_base_delay() -> None:
    assert not due(letter(last_failure=100.0), now=109.999, base_delay=10.0)


def test_the_backoff_doubles_with_each_replay() -> None:
    twice = letter(replays=2, last_failure=100.0)  # 10 * 2**2 = 40 s
    assert (due(twice, now=139.9, base_delay=10.0), due(twice, now=140.0, base_delay=10.0)) == (False, True)


def test_a_letter_without_a_last_failure_time_is_due_at_once() -> None:
    bare = DeadLetter("d", 0, 0, None, None, [], {})
    assert due(bare, now=1.0, base_delay=1.0)


# --------------------------------------------------------------------------- agent: auto_replayable


def test_nothing_is_auto_replayable_by_default() -> None:
    assert not auto_replayable(letter("timeout_exceeded"), policy_book(settings()))


def test_a_class_named_in_settings_is_auto_replayable() -> None:
    assert auto_replayable(letter("timeout_exceeded"), policy_book(settings(dlq_auto_replay="timeout_exceeded")))


def test_a_class_not_named_in_settings_is_not_auto_replayable() -> None:
    assert not auto_replayable(letter("schema_invalid"), policy_book(settings(dlq_auto_replay="timeout_exceeded")))


def test_a_type_policy_enables_auto_replay_for_that_type_only(tmp_path: Path) -> None:
    path = toml_file(tmp_path, '[types."order.paid"]\nauto_replay = ["handler_exception"]\n')
    s = settings(policy_file=path)
    assert auto_replayable(letter("handler_exception", "order.paid"), policy_book(s))
    assert not auto_replayable(letter("handler_exception", "order.shipped"), policy_book(s))


def test_a_type_policy_disables_auto_replay_for_that_type_only(tmp_path: Path) -> None:
    path = json_file(tmp_path, {"types": {"order.paid": {"auto_replay": []}}})
    s = settings(policy_file=path, dlq_auto_replay="timeout_exceeded")
    assert not auto_replayable(letter("timeout_exceeded", "order.paid"), policy_book(s))
    assert auto_replayable(letter("timeout_exceeded", "order.shipped"), policy_book(s))


def test_the_reference_policy_file_gives_each_reference_type_a_strategy() -> None:
    from workers.demo import REFERENCE_POLICIES
    from workers.handlers import load_domains

    book = policy_book(Settings(policy_file=REFERENCE_POLICIES))
    handled = set(load_domains(Settings().domains).specs)
    assert set(book.by_type) == handled, "every reference type, and only those, has a strategy"
    assert book.for_type("order.paid").ordering == "strict"
    assert book.for_type("order.paid").gap_policy == "park"
    for build_type in ("build.start", "build.progress", "build.complete"):
        assert book.for_type(build_type).auto_replay == frozenset({"timeout_exceeded"})
    assert book.for_type("order.paid").auto_replay == frozenset()


def test_a_gap_timeout_in_the_policy_file_takes_a_duration(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[types."a"]\ngap_timeout = "5m"\n[types."b"]\ngap_timeout = 7\n')
    book = policy_book(Settings(policy_file=path))
    assert book.for_type("a").gap_timeout == 300.0
    assert book.for_type("b").gap_timeout == 7.0
