"""The Prometheus alert rules parse, their promtool unit tests pass, and they keep their shape.

deploy/prometheus/alerts_test.yml fires and clears every alert in alerts.yml on synthetic
series; this test runs promtool over both, and over the Prometheus config that loads them.
It also checks what promtool cannot: the runbook's alert names exist, every alert says
which seqguard command to run, and every threshold is defined once, used, and documented
with its default in the file's header. (tests/integration/test_prometheus_alerts.py runs
the rules in a real Prometheus against real workers.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

MISSING_PROMTOOL = (
    "promtool is not on PATH: run `make system-deps` (Debian package `prometheus`); "
    "the alert rules are not checked without it."
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


# The alerts the runbook names: renaming one breaks the operators' pages.
RUNBOOK_ALERTS = {
    "EventOrderViolation",
    "DuplicateEventProcessing",
    "EventSequenceGap",
    "AggregatesParked",
    "DeadLetterQueueGrowing",
    "ConsumerLagHigh",
    "WorkerDown",
    "DLQAgentDown",
}
ANNOTATIONS = {"summary", "description", "runbook", "threshold"}


def alert_blocks(rules: str) -> dict[str, str]:
    """alert name -> the text of its rule (alerts.yml lists rules at one indentation)."""
    starts = list(re.finditer(r"^      - (alert|record): *(\S+) *$", rules, re.MULTILINE))
    ends = [m.start() for m in starts[1:]] + [len(rules)]
    return {m.group(2): rules[m.start() : end] for m, end in zip(starts, ends, strict=True) if m.group(1) == "alert"}


def test_the_runbook_alerts_exist_and_each_alert_says_what_to_do() -> None:
    blocks = alert_blocks((PROMETHEUS_DIR / "alerts.yml").read_text())
    assert RUNBOOK_ALERTS - set(blocks) == set(), f"missing: {sorted(RUNBOOK_ALERTS - set(blocks))}"
    for name, block in blocks.items():
        annotations = block.split("        annotations:\n", 1)[1]
        keys = set(re.findall(r"^          (\w+):", annotations, re.MULTILINE))
        assert keys == ANNOTATIONS, f"{name}: annotations {sorted(keys)}, want {sorted(ANNOTATIONS)}"
        runbook = annotations.split("          runbook:", 1)[1].split("          threshold:", 1)[0]
        assert "`seqguard " in runbook, f"{name}: the runbook names no seqguard command"


def test_every_threshold_is_defined_once_used_and_documented_with_its_default() -> None:
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    header = "".join(line for line in rules.splitlines(keepends=True) if line.startswith("#"))
    defined = dict(re.findall(r"record: seqguard:threshold:(\w+)\s*\n\s*expr: vector\(([-\d.e]+)\)", rules))
    assert len(defined) == rules.count("record: seqguard:threshold:"), "a threshold that is not vector(<number>)"
    blocks = alert_blocks(rules)
    used = {
        t for block in blocks.values() for t in re.findall(r"seqguard:threshold:(\w+)", block.split("annotations:")[0])
    }
    assert used - set(defined) == set(), f"thresholds used but not defined: {sorted(used - set(defined))}"
    assert set(defined) - used == set(), f"thresholds defined but used by no alert: {sorted(set(defined) - used)}"
    for name, value in defined.items():
        assert f"{name} ({value})" in header, f"the header does not document {name} with its default {value}"
    for name, block in blocks.items():
        duration = re.search(r"^        for: *(\S+)", block, re.MULTILINE)
        # A threshold series, or (for up/down states) the `for:` as the threshold.
        assert duration or "seqguard:threshold:" in block, f"{name} has no threshold"
        row = re.search(rf"^#[ \t]+{name}[ \t].*[ \t](\S+)[ \t]*$", header, re.MULTILINE)
        assert row, f"the header's table has no row for {name}"
        assert row.group(1) == (duration.group(1) if duration else "0"), f"{name}: the header's `for` is stale"
