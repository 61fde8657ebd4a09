"""The version guard: seqguard refuses to patch Faust/aiokafka versions it was not written for."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

import pytest

from workers.errors import StartupError
from workers.kafka import EXPECTED_VERSIONS, check_versions


def lookup(**versions: str) -> Callable[[str], str]:
    """A version getter as importlib.metadata.version, from keyword names (faust_streaming=...)."""
    known = {name.replace("_", "-"): v for name, v in versions.items()}

    def version(package: str) -> str:
        if package not in known:
            raise importlib.metadata.PackageNotFoundError(package)
        return known[package]

    return version


def test_another_faust_version_is_refused_naming_installed_and_expected() -> None:
    with pytest.raises(StartupError) as refused:
        check_versions(lookup(faust_streaming="0.16.0", aiokafka="0.14.0"))
    message = str(refused.value)
    assert "faust-streaming 0.16.0 is installed" in message
    assert "written for 0.15.3" in message
    assert "aiokafka 0.14.0" not in message  # the right one is not named


def test_every_wrong_package_is_named() -> None:
    with pytest.raises(StartupError) as refused:
        check_versions(lookup(faust_streaming="0.15.2", aiokafka="0.13.0"))
    message = str(refused.value)
    assert "faust-streaming 0.15.2" in message and "0.15.3" in message
    assert "aiokafka 0.13.0" in message and "0.14.0" in message


def test_a_missing_package_is_refused() -> None:
    with pytest.raises(StartupError, match="aiokafka is not installed, seqguard's patches were written for 0.14.0"):
        check_versions(lookup(faust_streaming="0.15.3"))


def test_the_expected_versions_pass() -> None:
    check_versions(lookup(**{name.replace("-", "_"): v for name, v in EXPECTED_VERSIONS.items()}))


def test_the_installed_versions_pass() -> None:
    check_versions()
