"""The pure half of benchmarks/scaling.py: figures per aggregate, fits, ratios, the report's
text, and the recovery figures Faust logs. No I/O: rows are the dicts scaling.py measured.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from typing import Any

MIB = 1024 * 1024
_CELL = re.compile(r"[│|]")


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs; None without two distinct xs."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def per_aggregate(row: dict[str, Any]) -> dict[str, float | None]:
    """Bytes per aggregate: worker memory over its own empty start (after applying; after a
    restart that only recovered), the latest changelog record, and changelog bytes written."""
    n = row["aggregates"]
    rss0 = row["empty_start"]["rss_bytes"]
    term = row.get("restarts", {}).get("term", {})
    written = row.get("changelog_bytes_written")
    return {
        "memory_applied": (row["apply"]["rss_bytes"] - rss0) / n,
        "memory_restarted": (term["rss_bytes"] - rss0) / n if "rss_bytes" in term else None,
        "state_latest": row["changelog"]["state_bytes_per_aggregate"]["mean"],
        "changelog_written": written / n if written is not None else None,
        "changelog_records": row["changelog"]["records_total"] / n,
    }


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


COLUMNS = (
    ("N", 9),
    ("store", 7),
    ("RSS MiB", 8),
    ("mem/agg B", 9),
    ("after restart", 13),
    ("state B/agg", 11),
    ("written B/agg", 13),
    ("recs/agg", 8),
    ("disk MiB", 8),
    ("ready s TERM", 12),
    ("ready s KILL", 12),
    ("empty s", 7),
)


def table_lines(rows: Iterable[dict[str, Any]]) -> list[str]:
    """One line per (N, store) row that completed; failed rows say why."""
    head = " | ".join(name.rjust(width) for name, width in COLUMNS)
    out = [head, "-" * len(head)]
    for row in rows:
        if "error" in row:
            out.append(f"{row['aggregates']:>9,} | {row['store']:>7} | failed: {row['error'][:90]}")
            continue
        per = per_aggregate(row)
        restarts = row.get("restarts", {})
        cells = [
            format(row["aggregates"], ","),
            row["store"],
            _num(row["apply"]["rss_bytes"] / MIB, ".1f"),
            _num(per["memory_applied"], ",.0f"),
            _num(per["memory_restarted"], ",.0f"),
            _num(per["state_latest"], ",.0f"),
            _num(per["changelog_written"], ",.0f"),
            _num(per["changelog_records"], ".2f"),
            _num(row.get("data_dir_bytes", 0) / MIB, ".1f"),
            _num(restarts.get("term", {}).get("ready_s"), ".2f"),
            _num(restarts.get("kill", {}).get("ready_s"), ".2f"),
            _num(row["empty_start"]["ready_s"], ".2f"),
        ]
        out.append(" | ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS, strict=True)))
    return out


def _ok(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "error" not in r]


def _restarted_rss(row: dict[str, Any]) -> float | None:
    rss = row.get("restarts", {}).get("term", {}).get("rss_bytes")
    return None if rss is None else float(rss)


def store_fits(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per store, over every N (and its empty starts at N = 0): worker memory and restart time
    as straight lines in N. The slope is the marginal cost, free of fixed start-up costs."""
    fits: dict[str, dict[str, float | None]] = {}
    for store in dict.fromkeys(r["store"] for r in _ok(rows)):
        mine = [r for r in _ok(rows) if r["store"] == store]
        xs = [0.0] * len(mine) + [float(r["aggregates"]) for r in mine]
        base = [float(r["empty_start"]["rss_bytes"]) for r in mine]
        applied = base + [float(r["apply"]["rss_bytes"]) for r in mine]
        fit: dict[str, float | None] = {"memory_bytes_per_aggregate": slope(xs, applied)}
        restarted = [(x, y) for x, y in zip(xs, base + [_restarted_rss(r) for r in mine], strict=True) if y]
        fit["memory_after_restart_bytes_per_aggregate"] = slope([x for x, _ in restarted], [y for _, y in restarted])
        for how in ("term", "kill"):
            ready = [r["empty_start"]["ready_s"] for r in mine] + [
                r.get("restarts", {}).get(how, {}).get("ready_s") for r in mine
            ]
            pairs = [(x, y) for x, y in zip(xs, ready, strict=True) if y is not None]
            s = slope([x for x, _ in pairs], [y for _, y in pairs])
            fit[f"restart_{how}_s_per_100k"] = None if s is None else s * 100_000
        fits[store] = fit
    return fits


def comparisons(rows: list[dict[str, Any]], base: str = "memory") -> list[dict[str, Any]]:
    """Same-N ratios of every other store to ``base`` (the rows of one N ran one after the other)."""
    out = []
    by_key = {(r["aggregates"], r["store"]): r for r in _ok(rows)}
    for (n, store), row in by_key.items():
        other = by_key.get((n, base))
        if store == base or other is None:
            continue
        a, b = per_aggregate(row), per_aggregate(other)
        ra, rb = row.get("restarts", {}), other.get("restarts", {})
        out.append(
            {
                "aggregates": n,
                "store": store,
                "base": base,
                "rss": ratio(row["apply"]["rss_bytes"], other["apply"]["rss_bytes"]),
                "memory_per_aggregate": ratio(a["memory_applied"], b["memory_applied"]),
                "memory_after_restart": ratio(a["memory_restarted"], b["memory_restarted"]),
                **{
                    f"restart_{how}": ratio(ra.get(how, {}).get("ready_s"), rb.get(how, {}).get("ready_s"))
                    for how in ("term", "kill")
                },
            }
        )
    return out


def growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per store, consecutive sizes: how much N grew and how much restart time over the empty start grew."""
    out = []
    for store in dict.fromkeys(r["store"] for r in _ok(rows)):
        mine = sorted((r for r in _ok(rows) if r["store"] == store), key=lambda r: r["aggregates"])
        for small, big in zip(mine, mine[1:], strict=False):
            extra = [
                (r.get("restarts", {}).get("term", {}).get("ready_s") or 0) - r["empty_start"]["ready_s"]
                for r in (small, big)
            ]
            out.append(
                {
                    "store": store,
                    "from": small["aggregates"],
                    "to": big["aggregates"],
                    "n_ratio": big["aggregates"] / small["aggregates"],
                    "restart_over_empty_ratio": ratio(extra[1], extra[0]) if extra[0] > 0.05 else None,
                    "rss_over_empty_ratio": ratio(
                        big["apply"]["rss_bytes"] - big["empty_start"]["rss_bytes"],
                        small["apply"]["rss_bytes"] - small["empty_start"]["rss_bytes"],
                    ),
                }
            )
    return out


def ratio_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for c in comparisons(rows):
        out.append(
            f"  N={c['aggregates']:,}: {c['store']}/{c['base']}: RSS x{_num(c['rss'], '.2f')}, memory per aggregate "
            f"x{_num(c['memory_per_aggregate'], '.2f')} (after restart x{_num(c['memory_after_restart'], '.2f')}), "
            f"restart-to-ready x{_num(c['restart_term'], '.2f')} after SIGTERM, x{_num(c['restart_kill'], '.2f')} "
            "after SIGKILL"
        )
    for g in growth(rows):
        out.append(
            f"  {g['store']}: N x{g['n_ratio']:.0f} ({g['from']:,} -> {g['to']:,}): RSS over the empty start "
            f"x{_num(g['rss_over_empty_ratio'], '.1f')}, restart time over the empty start "
            f"x{_num(g['restart_over_empty_ratio'], '.1f')}"
        )
    for store, fit in store_fits(rows).items():
        out.append(
            f"  {store}, fitted over every N: {_num(fit['memory_bytes_per_aggregate'], ',.0f')} B of RSS per "
            f"aggregate after applying, {_num(fit['memory_after_restart_bytes_per_aggregate'], ',.0f')} B after a "
            f"restart; restart-to-ready {_num(fit['restart_term_s_per_100k'], '+.2f')} s per 100k aggregates "
            f"after SIGTERM, {_num(fit['restart_kill_s_per_100k'], '+.2f')} s after SIGKILL"
        )
    return out


def _log_event(line: str) -> tuple[str, float | None]:
    """A JSON log line's message and its time in seconds (None if it has none)."""
    try:
        body = json.loads(line)
    except ValueError:
        return line, None
    if not isinstance(body, dict):
        return line, None
    try:
        at = dt.datetime.fromisoformat(str(body.get("timestamp"))).timestamp()
    except ValueError:
        at = None
    return str(body.get("event", "")), at


def _log_table(text: str) -> dict[tuple[str, int], int]:
    """Faust's terminal log table (topic, partition, number); a ditto mark repeats the topic above."""
    out: dict[tuple[str, int], int] = {}
    topic = ""
    for line in text.splitlines():
        cells = [c.strip() for c in _CELL.split(line) if c.strip()]
        if len(cells) != 3 or not cells[1].isdigit() or not cells[2].lstrip("-").isdigit():
            continue
        topic = topic if cells[0] == "〃" else cells[0]
        out[(topic, int(cells[1]))] = int(cells[2])
    return out


def recovery_from_log(lines: Iterable[str]) -> dict[str, Any]:
    """What Faust said while recovering the active tables. Per pass: the records it would read
    (highwater minus start offset, summed over the changelog partitions; Faust logs both minus
    one) and the seconds from "Restoring state" to "Done reading" (None if it read nothing)."""
    highwaters: dict[tuple[str, int], int] | None = None
    records: list[int] = []
    seconds: list[float] = []
    restoring: float | None = None
    for line in lines:
        event, at = _log_event(line)
        if "Highwater for active changelog partitions" in event:
            highwaters = _log_table(event)
        elif "active offsets at start of reading" in event and highwaters is not None:
            starts = _log_table(event)
            records.append(sum(max(0, hw - starts.get(tp, -1)) for tp, hw in highwaters.items()))
            highwaters = None
        elif "Restoring state from changelog topics" in event:
            restoring = at
        elif "Done reading from changelog topics" in event and restoring is not None and at is not None:
            seconds.append(round(at - restoring, 3))
            restoring = None
    return {
        "passes": len(records),
        "records_to_read": sum(records),
        "records_per_pass": records,
        "read_seconds": round(sum(seconds), 3) if seconds else None,
    }


def row_summary(row: dict[str, Any]) -> str:
    per, rs, ap = row["per_aggregate"], row.get("restarts", {}), row["apply"]
    checks = [r["state_check"]["ok"] for r in rs.values() if "state_check" in r]
    check = "WRONG" if False in checks else "OK" if checks and all(checks) else "not checked"
    read = ", ".join(
        f"{how} {r['recovery']['records_to_read']:,} in {r['recovery']['read_seconds']} s" for how, r in rs.items()
    )
    return (
        f"  RSS {row['apply']['rss_bytes'] / MIB:.1f} MiB ({per['memory_applied']:,.0f} B/aggregate over the "
        f"empty start's {row['empty_start']['rss_bytes'] / MIB:.1f}); all applied {ap['seconds_after_ready']} s "
        f"after ready ({ap['events_per_s'] or '-'} events/s); restart-to-ready "
        + ", ".join(f"{how} {r['ready_s']} s ({r['cpu_s']} s of worker CPU)" for how, r in rs.items())
        + f" (empty start {row['empty_start']['ready_s']} s); changelog records Faust read: {read}; state {check}"
    )


def report_lines(report: dict[str, Any]) -> list[str]:
    env, w = report["environment"], report["workload"]
    return [
        "=" * 78,
        f"seqguard scaling with the number of aggregates  {report['date']}  (commit {env['git_commit']}"
        f"{', workers/tables modified' if env['workers_or_tables_uncommitted_changes'] else ''})",
        f"machine: {env['cpus']} CPUs, load {' '.join(env['loadavg_start'])} -> {' '.join(env['loadavg_end'])} "
        "(shared and noisy: compare within the run)",
        f"workload: per aggregate {w['events_per_aggregate']} events in order (round by round), {w['size']} B values, "
        f"{w['partitions']} partitions, no handler; embedded Tansu (never compacts); one worker",
        "columns: RSS after applying; mem/agg = (RSS - empty start's RSS) / N, after applying and after a restart;",
        "  state B/agg = key + value of the latest changelog record; written B/agg = every changelog byte / N;",
        "  recs/agg = changelog records / N; disk = data dir after SIGTERM; ready s = process start to the first",
        "  /readyz 200 after SIGTERM, after SIGKILL, and on empty topics (the fixed cost)",
        "-" * 78,
        *table_lines(report["rows"]),
        "-" * 78,
        "same-run comparisons:",
        *(ratio_lines(report["rows"]) or ["  (one store and one size: nothing to compare)"]),
        "-" * 78,
        f"JSON: {report['json_path']}",
        f"reproduce: {report['command']}",
        "=" * 78,
    ]
