"""The pure parts of benchmarks/scaling.py: fits, per-aggregate figures, the table, Faust's recovery log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks.scaling_report import comparisons, per_aggregate, recovery_from_log, slope, store_fits, table_lines

MIB = 1024 * 1024


def row(store: str, n: int, rss_mib: float, restarted_mib: float, ready: float) -> dict[str, Any]:
    return {
        "store": store,
        "aggregates": n,
        "empty_start": {"rss_bytes": 80 * MIB, "ready_s": 5.0},
        "apply": {"rss_bytes": int(rss_mib * MIB)},
        "changelog": {"records_total": 2 * n, "state_bytes_per_aggregate": {"mean": 78.0}},
        "changelog_bytes_written": 150 * n,
        "data_dir_bytes": 0,
        "restarts": {"term": {"rss_bytes": int(restarted_mib * MIB), "ready_s": ready}},
    }


def test_slope_is_the_least_squares_line_and_none_without_two_points() -> None:
    assert slope([0, 1, 2], [1, 3, 5]) == pytest.approx(2.0)
    assert slope([0, 10, 10], [0, 9, 11]) == pytest.approx(1.0)
    assert slope([5, 5], [1, 2]) is None


def test_per_aggregate_figures_are_over_the_empty_start() -> None:
    per = per_aggregate(row("memory", 1024, 81, 80.5, 6.0))
    assert per["memory_applied"] == pytest.approx(1024)  # 1 MiB over 1024 aggregates
    assert per["memory_restarted"] == pytest.approx(512)
    assert (per["changelog_written"], per["changelog_records"], per["state_latest"]) == (150, 2, 78.0)


def test_fits_exclude_fixed_costs_and_stores_compare_at_the_same_n() -> None:
    rows = [row("memory", 100_000, 180, 150, 25.0), row("memory", 200_000, 280, 220, 45.0)]
    rows.append(row("rocksdb", 100_000, 130, 90, 10.0))
    fit = store_fits(rows)["memory"]
    assert fit["memory_bytes_per_aggregate"] == pytest.approx(100 * MIB / 100_000)  # the empty starts sit on the line
    assert fit["restart_term_s_per_100k"] == pytest.approx(20.0)
    (c,) = comparisons(rows)
    assert (c["store"], c["aggregates"]) == ("rocksdb", 100_000)
    assert c["restart_term"] == pytest.approx(0.4)
    assert c["restart_kill"] is None  # not measured: no ratio rather than a wrong one


def test_table_has_one_line_per_row_and_says_why_a_row_failed() -> None:
    lines = table_lines([row("memory", 10_000, 90, 85, 7.5), {"store": "rocksdb", "aggregates": 10_000, "error": "X"}])
    assert len(lines) == 4
    assert lines[2].split("|")[0].strip() == "10,000" and "7.50" in lines[2]
    assert "failed: X" in lines[3]


def faust_table(title: str, column: str, values: list[int]) -> str:
    rows = "\n".join(f"| {'t-state-changelog' if p == 0 else '〃'} | {p} | {v} |" for p, v in enumerate(values))
    return f"+{title}---+\n| topic | partition | {column} |\n+---+\n{rows}\n+---+"


def log(event: str, at: str) -> str:
    return json.dumps({"timestamp": f"2026-11-22T02:53:{at}Z", "level": "INFO", "event": event})


def test_recovery_figures_come_from_fausts_log_tables_and_times() -> None:
    lines = [
        log(
            "[^---Recovery]: Highwater for active changelog partitions:\n" + faust_table("HW", "highwater", [9, 4]),
            "01",
        ),
        log("[^---Recovery]: active offsets at start of reading:\n" + faust_table("RS", "offset", [-1, 2]), "01"),
        log("[^---Recovery]: Restoring state from changelog topics...", "02.0"),
        "not json",
        log("[^---Recovery]: Done reading from changelog topics", "04.5"),
    ]
    got = recovery_from_log(lines)
    assert got["records_to_read"] == 10 + 2  # partition 0: offsets 0..9; partition 1: 3..4
    assert (got["passes"], got["read_seconds"]) == (1, 2.5)
