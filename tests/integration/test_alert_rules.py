"""The Prometheus alert rules parse, and their promtool unit tests pass.

deploy/prometheus/alerts_test.yml fires and clears every alert in alerts.yml on synthetic
series; this test runs promtool over both, and over the Prometheus config that loads them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

MISSING_PROMTOOL = (
    "promtool is not on PATH. `make test` installs it (Debian package `prometheus`: "
    "apt-get install -y prometheus); the alert rules are not checked without it."
)


def find_promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(MISSING_PROMTOOL, pytrace=False)
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Run from the rules folder: rule_files paths are relative to the file naming them,
    # and promtool's messages then name files the way the repo does.
    return subprocess.run(
        [find_promtool(), *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    command = " ".join(result.args)
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, f"{command} exited {result.returncode}\n{output}"


def test_alert_rules_are_valid() -> None:
    assert_ok(run_promtool("check", "rules", "alerts.yml"))


def test_alert_rules_unit_tests_pass() -> None:
    assert_ok(run_promtool("test", "rules", "alerts_test.yml"))


def test_prometheus_config_is_valid() -> None:
    # Also checks that the rule file the config names exists and parses.
    assert_ok(run_promtool("check", "config", "prometheus.yml"))


def test_every_alert_has_a_unit_test() -> None:
    # Read with regular expressions: PyYAML is not a dependency of the project. The test
    # file keeps each check's `alertname:` line just above its `exp_alerts:` line.
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    alerts = set(re.findall(r"^\s*- alert:\s*(\w+)\s*$", rules, re.MULTILINE))
    tests = (PROMETHEUS_DIR / "alerts_test.yml").read_text()
    checks = re.findall(r"alertname:\s*(\w+)\s*\n\s*exp_alerts:[ \t]*(\[\])?", tests)
    assert alerts, "alerts.yml defines no alert"
    assert checks, "alerts_test.yml has no alert_rule_test checks"
    fired = {name for name, empty in checks if not empty}
    quiet = {name for name, empty in checks if empty}
    assert alerts - fired == set(), f"alerts never tested firing: {sorted(alerts - fired)}"
    assert alerts - quiet == set(), f"alerts never tested quiet: {sorted(alerts - quiet)}"
    assert {name for name, _ in checks} <= alerts, "alerts_test.yml names unknown alerts"
