"""Settings as people write them: durations with units, choices in any case, typos named, .env, one-line errors."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field, SecretStr, ValidationError

from workers.settings import ENV_PREFIX, READ_ELSEWHERE, Settings, SettingsError, env_names, load_settings
from workers.settings_types import (
    DURATION_HINT,
    UNITS,
    Duration,
    Millis,
    describe_errors,
    literal_choices,
    seconds_of,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SEQGUARD_ variable from whoever runs the tests, and a working directory without a .env."""
    import os

    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def fields_typed(metadata_of: object) -> list[str]:
    """Fields declared with the annotated type ``metadata_of`` (Duration or Millis)."""
    wanted = metadata_of.__metadata__  # type: ignore[attr-defined]
    return [n for n, f in Settings.model_fields.items() if any(m in f.metadata for m in wanted)]


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("24h", 86_400),
        ("1h30m", 5_400),
        ("500ms", 0.5),
        ("2d", 172_800),
        ("1.5h", 5_400),
        ("24H", 86_400),
        (" 1h 30m ", 5_400),
        ("1m30s", 90),
        ("30", 30),
        ("2.5", 2.5),
        ("1e3", 1000),
        (45, 45),
        (0.25, 0.25),
    ],
)
def test_a_duration_in_any_of_its_spellings(text: str | float, seconds: float) -> None:
    assert Settings(gap_timeout=text).gap_timeout == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["abc", "", "5 minutes", "1h-30m", "h", "5x", "inf", "nan", "-5s", "1,5h", True])
def test_what_is_not_a_duration_is_refused_with_the_formats(text: object) -> None:
    assert seconds_of(text) is None
    with pytest.raises(ValidationError, match=re.escape(DURATION_HINT)):
        Settings(state_ttl=text)  # type: ignore[arg-type]


def test_a_duration_still_obeys_its_fields_bounds() -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        Settings(gap_timeout="0s")
    assert Settings(retry_base_delay="0ms").retry_base_delay == 0


parts = st.lists(
    st.tuples(st.integers(0, 10_000), st.sampled_from(sorted(UNITS)), st.sampled_from([str.lower, str.upper])),
    min_size=1,
    max_size=6,
)


@given(parts)
def test_unit_parts_add_up_exactly(pieces: list[tuple[int, str, object]]) -> None:
    text = "".join(f"{n}{case(unit)}" for n, unit, case in pieces)  # type: ignore[operator]
    total = sum((n * UNITS[unit] for n, unit, _ in pieces), Fraction(0))
    assert seconds_of(text) == total
    if total > 0:
        assert Settings(effect_ttl=text).effect_ttl == float(total)


@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_plain_seconds_round_trip(seconds: float) -> None:
    assert Settings(state_ttl=repr(seconds)).state_ttl == seconds
    assert Settings(state_ttl=seconds).state_ttl == seconds


@given(st.integers(0, 10**9))
def test_whole_seconds_round_trip_in_every_unit_they_divide(seconds: int) -> None:
    for unit, size in UNITS.items():
        if (count := Fraction(seconds) / size).denominator == 1:
            assert seconds_of(f"{count}{unit}") == seconds


def test_every_field_measured_in_seconds_takes_units() -> None:
    """A field whose description says seconds is a Duration, so a new one cannot miss the units."""
    says_seconds = re.compile(r"\bseconds?\b", re.IGNORECASE)
    in_seconds = [n for n, f in Settings.model_fields.items() if says_seconds.search(f.description or "")]
    assert in_seconds and set(in_seconds) == set(fields_typed(Duration))
    for name in in_seconds:
        assert getattr(Settings(**{name: "2m"}), name) == 120.0, name


def test_millisecond_fields_keep_their_unit_and_take_suffixes() -> None:
    millis = [n for n in Settings.model_fields if n.endswith("_ms")]
    assert millis and set(millis) == set(fields_typed(Millis))
    for name in millis:
        assert getattr(Settings(**{name: "50"}), name) == 50, name  # a plain number: milliseconds, as before
        assert getattr(Settings(**{name: "2s"}), name) == 2000, name
        assert getattr(Settings(**{name: "250ms"}), name) == 250, name
        assert getattr(Settings(**{name: "0.25s"}), name) == 250, name
    with pytest.raises(ValidationError, match="whole number of milliseconds"):
        Settings(fetch_max_wait_ms="1.5ms")
    with pytest.raises(ValidationError, match="500ms, 2s or milliseconds"):
        Settings(producer_linger_ms="soon")


# --------------------------------------------------------------------------- choices


CHOICE_FIELDS = {n: literal_choices(f.annotation) for n, f in Settings.model_fields.items()}
CHOICE_FIELDS = {n: c for n, c in CHOICE_FIELDS.items() if c}


def test_the_choice_fields_are_found() -> None:
    expected = {"log_level", "log_format", "default_ordering", "gap_policy", "overflow_policy", "start_policy"}
    assert expected | {"ledger_outage"} <= set(CHOICE_FIELDS)


choice_of_field = st.sampled_from(sorted(CHOICE_FIELDS)).flatmap(
    lambda f: st.tuples(st.just(f), st.sampled_from(CHOICE_FIELDS[f]))
)


@given(choice_of_field, st.randoms())
def test_choices_in_any_case_keep_the_models_spelling(field_choice: tuple[str, str], rnd: Random) -> None:
    field, choice = field_choice
    variant = "".join(c.upper() if rnd.random() < 0.5 else c.lower() for c in choice)
    try:
        assert getattr(Settings(**{field: variant}), field) == choice
    except ValidationError as exc:  # a choice that needs others (a SASL mechanism needs SASL): the field passed
        assert all(error["loc"] == () for error in exc.errors()), exc


def test_upper_case_choices_stay_upper_case() -> None:
    assert Settings(kafka_security_protocol="plaintext").kafka_security_protocol == "PLAINTEXT"  # type: ignore[arg-type]


def test_choices_from_the_environment(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQGUARD_LOG_LEVEL", "INFO")
    monkeypatch.setenv("SEQGUARD_DEFAULT_ORDERING", "Ordered")
    monkeypatch.setenv("SEQGUARD_GAP_POLICY", " PARK ")
    s = load_settings()
    assert (s.log_level, s.default_ordering, s.gap_policy) == ("info", "ordered", "park")


def test_a_wrong_choice_is_still_refused() -> None:
    with pytest.raises(ValidationError, match="'debug', 'info', 'warning' or 'error'"):
        Settings(log_level="loud")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- unknown names


def test_a_mistyped_variable_is_an_error_naming_the_closest(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQGUARD_GAP_TIMOUT", "5")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == "unknown setting SEQGUARD_GAP_TIMOUT (did you mean SEQGUARD_GAP_TIMEOUT?)"


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("SEQGUARD_STATETTL", "SEQGUARD_STATE_TTL"),
        ("seqguard_loglevel", "SEQGUARD_LOG_LEVEL"),
        ("SEQGUARD_REDIS", "SEQGUARD_REDIS_URL"),
        ("SEQGUARD_BROKER", "SEQGUARD_BROKER_URL"),
    ],
)
def test_suggestions(clean: Path, monkeypatch: pytest.MonkeyPatch, typo: str, meant: str) -> None:
    monkeypatch.setenv(typo, "1")
    with pytest.raises(SettingsError, match=f"unknown setting {typo} \\(did you mean {meant}\\?\\)"):
        load_settings()


def test_a_name_like_no_setting_gets_no_guess(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQGUARD_XYZZY", "1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == "unknown setting SEQGUARD_XYZZY"


def test_variables_read_elsewhere_are_allowed(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in READ_ELSEWHERE:
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("OTHER_APP_GAP_TIMOUT", "1")  # not ours
    assert load_settings().gap_timeout == 30


# Names in text that are not variables: ``SEQGUARD_GAP_*`` (a family), ``SEQGUARD_<NAME>``.
_NAME = re.compile(r"SEQGUARD_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*])")
_SCANNED = ("workers", "tables", "benchmarks", "deploy", "tests/harness.py", "tests/conftest.py", "tests/integration")
_NOT_SCANNED = {"tests/integration/test_settings_cli.py"}  # spells typos on purpose


def test_every_seqguard_variable_the_project_uses_is_a_setting_or_allowed() -> None:
    """A new variable read outside the model must join READ_ELSEWHERE, or every worker refuses to start."""
    files = [ROOT / p for p in ("Procfile", "docker-compose.yml", "Dockerfile", "Makefile")]
    for place in _SCANNED:
        path = ROOT / place
        files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".pyc") if path.is_dir() else [path]
    used = {
        name: str(f.relative_to(ROOT))
        for f in files
        if f.exists() and str(f.relative_to(ROOT)) not in _NOT_SCANNED
        for name in _NAME.findall(f.read_text(errors="replace"))
    }
    assert {n: where for n, where in used.items() if n not in env_names() | READ_ELSEWHERE} == {}
    assert set(used) >= READ_ELSEWHERE, "an allowed name nothing reads any more: drop it"
    assert not READ_ELSEWHERE & env_names()


# --------------------------------------------------------------------------- .env


def test_dotenv_is_read_and_the_environment_wins(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean / ".env").write_text(
        "# shared with other tools\nDATABASE_URL=postgres://x\nSEQGUARD_STATE_TTL=2h\nSEQGUARD_APP_ID=from-file\n"
        "export SEQGUARD_LOG_LEVEL=WARNING\n"
    )
    monkeypatch.setenv("SEQGUARD_APP_ID", "from-env")
    s = load_settings()
    assert (s.state_ttl, s.app_id, s.log_level) == (7200.0, "from-env", "warning")


def test_unknown_names_in_dotenv_are_errors_too(clean: Path) -> None:
    (clean / ".env").write_text("SEQGUARD_GAP_TIMOUT=5\n")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == "unknown setting SEQGUARD_GAP_TIMOUT (did you mean SEQGUARD_GAP_TIMEOUT?) in .env"


def test_a_bad_value_in_dotenv_is_reported_as_written(clean: Path) -> None:
    (clean / ".env").write_text("SEQGUARD_EFFECT_LEASE=a minute\n")
    with pytest.raises(SettingsError, match="SEQGUARD_EFFECT_LEASE='a minute': not a duration"):
        load_settings()


# --------------------------------------------------------------------------- one line


def test_a_bad_value_is_one_line(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQGUARD_GAP_TIMEOUT", "abc")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert str(caught.value) == f"invalid setting SEQGUARD_GAP_TIMEOUT='abc': {DURATION_HINT}"


def test_every_problem_on_one_line(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQGUARD_GAP_TIMEOUT", "abc")
    monkeypatch.setenv("SEQGUARD_LOG_LEVEL", "loud")
    monkeypatch.setenv("SEQGUARD_PARTITIONS", "-3")
    monkeypatch.setenv("SEQGUARD_STATE_TIL", "1d")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.split("; ") == [
        "unknown setting SEQGUARD_STATE_TIL (did you mean SEQGUARD_STATE_TTL?)",
        "invalid setting SEQGUARD_PARTITIONS='-3': input should be greater than or equal to 1",
        f"invalid setting SEQGUARD_GAP_TIMEOUT='abc': {DURATION_HINT}",
        "invalid setting SEQGUARD_LOG_LEVEL='loud': input should be 'debug', 'info', 'warning' or 'error'",
    ]


def test_a_secrets_value_is_never_shown() -> None:
    class Model(BaseModel):
        token: SecretStr = Field(min_length=12)

    with pytest.raises(ValidationError) as caught:
        Model(token="hunter2")  # type: ignore[arg-type]
    [line] = describe_errors(caught.value, "X_", {"X_TOKEN": "hunter2"}, {"token"})
    assert line.startswith("invalid setting X_TOKEN='**********': ") and "hunter2" not in line
