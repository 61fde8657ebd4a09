"""The text report of benchmarks.throughput: its result (main_async's dict, as written to the
JSON) as the lines printed at the end of a run. No I/O.
"""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks.changelog_stats import summary_lines


def report_lines(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    w, f, b, env = r["workload"], r["floor"], r["seqguard"], r["environment"]
    cpu, m = b["cpu_pct"], b["metrics"]
    modified = ", workers/tables modified" if env["workers_or_tables_uncommitted_changes"] else ""
    load = f"{' '.join(env['loadavg_start'])} -> {' '.join(env['loadavg_end'])}"
    floor_runs = ", ".join(format(x["events_per_s"], ",") for x in f["runs"])
    sizes = ", ".join(f"{k} B x{v:,}" for k, v in w["value_bytes"].items())
    ratio = r["ratio_seqguard_to_floor"]
    out = [
        "",
        "=" * 78,
        f"seqguard throughput report  {r['date']}  (commit {env['git_commit']}{modified})",
        f"machine: {env['cpus']} CPUs ({env['cpu_model']}), load {load}; SHARED AND NOISY:",
        "  other processes' CPU is shown per phase as 'others'; repeat before trusting a difference < ~20%.",
        f"broker: {env['broker']}; python {env['python']}, aiokafka {env['aiokafka']}, faust {env['faust']}",
        "-" * 78,
        f"N = {w['records']:,} records ({w['unique']:,} unique + {w['duplicates']:,} duplicates), "
        f"{w['aggregates']:,} aggregates, {w['partitions']} partitions,",
        f"    values {sizes}; {w['ahead_of_turn']:,} events ({w['ahead_fraction']:.1%}) arrive ahead of their turn",
        f"(a) floor (aiokafka getmany + json.loads + dict update): {f['events_per_s']:>9,} events/s",
        f"    {f['cpu_us_per_event']} µs consumer CPU/event; runs {floor_runs}",
        f"(b) seqguard worker (no handler, changelogs on):         {b['events_per_s']:>9,} events/s received,"
        f" {b['applied_per_s']:,} applied/s",
        f"    over {b['seconds']} s; excluding the first sample's {b['received_at_first_sample']:,}: "
        f"{b['events_per_s_conservative']:,} events/s; {b['worker_cpu_us_per_event']} µs worker CPU/event",
        f"    CPU (% of one core): worker {cpu['worker']}, broker {cpu['broker']}, others {cpu['others']}",
        f"    per worker CPU second: {b['events_per_cpu_second']:,} events (the rate with a core to itself, "
        f"estimated; floor: {round(1e6 / f['cpu_us_per_event']):,})",
        f"    metrics: {m['duplicates']:.0f} duplicates, {m['out_of_order']:.0f} buffered out of order, "
        f"{m['dead_lettered']:.0f} dead-lettered, {m['order_violations']:.0f} late, {m['gaps']:.0f} gaps;",
        f"    {m['batches']:.0f} batches (~{m['events_per_batch']} events, "
        f"mean {m['batch_seconds_mean'] * 1000:.0f} ms)",
    ]
    if "output_check" in b:
        v = b["output_check"]
        verdict = "OK" if v["ok"] else "FAILED"
        out.append(
            f"    output check: {v['records']:,}/{v['expected']:,} records, "
            f"{v['aggregates_wrong']} aggregates out of order or incomplete: {verdict}"
        )
    if "records_written_per_input_event" in b:
        per = b["records_written_per_input_event"]
        out.append("    records written per input event: " + ", ".join(f"{k} {v}" for k, v in per.items()))
    if "changelog" in b:
        out += summary_lines(b["changelog"])
    out.append(f"    ratio b/a = {ratio:.3f}  (the floor is {1 / max(1e-9, ratio):.1f}x faster)")
    out.append(f"    worker log {b['worker_log']['log']}: {b['worker_log']['counts'] or 'no warnings or errors'}")
    if "seqguard_profiled" in r:
        p = r["seqguard_profiled"]
        out.append(f"(b') under py-spy: {p['events_per_s']:,} events/s; {p['profile_txt']}; top self time:")
        out += [f"      {pct:5.1f}%  {name}" for name, pct in p["profile"]["top_self_pct"][:10]]
    for c in r.get("latency", []):
        ccpu = c["cpu_pct"]
        if c.get("pipeline") == "forwarder":
            out += [
                f"(c') forwarder only (the broker's floor) at {c['send_rate_per_s']:,}/s, fetch wait "
                f"{c['fetch_max_wait_ms']:>3} ms: p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, max {c['max_ms']} ms",
                f"    CPU: forwarder {ccpu['worker']}%, broker {ccpu['broker']}%, bench {ccpu['bench']}%, "
                f"others {ccpu['others']}%" + ("" if c["kept_up"] else "; FELL BEHIND"),
            ]
            continue
        out += [
            f"(c) latency at {c['send_rate_per_s']:,}/s, fetch wait {c['fetch_max_wait_ms']:>3} ms: "
            f"p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, max {c['max_ms']} ms",
            f"    {c['measured_after_warmup']:,} measured of {c['received']:,}/{c['sent']:,} received/sent "
            f"(first {args.latency_warmup} s not measured); "
            + (
                "worker kept up"
                if c["kept_up"]
                else f"WORKER FELL BEHIND: p50 {c['p50_first_third_ms']} -> {c['p50_last_third_ms']} ms over the run, "
                f"output went on {c['output_after_producer_stopped_s']} s after the producer stopped "
                f"(output {c['output_rate_per_s']:,}/s): this is queueing, not fetch latency"
            ),
            f"    CPU: worker {ccpu['worker']}%, broker {ccpu['broker']}%, bench (producer+probe) {ccpu['bench']}%, "
            f"others {ccpu['others']}%",
            f"    worker's own apply lag (histogram buckets): p50 <= {c['worker_apply_lag_p50_le_s']} s, "
            f"p99 <= {c['worker_apply_lag_p99_le_s']} s",
        ]
        cycle = c.get("worker_cycle")
        if cycle and cycle["timed"]["process"]:
            means = ", ".join(f"{p} {v} ms" for p, v in cycle["mean_ms"].items())
            out.append(f"    worker cycle, mean per batch: {means} ({cycle['timed']['process']:,} batches)")
        if c["worker_log"]["counts"]:
            out.append(f"    worker log {c['worker_log']['log']}: {c['worker_log']['counts']}")
    if r.get("latency"):
        out += [
            "    latency = probe receive time - input CreateTime, producer linger "
            f"({args.producer_linger_ms} ms) and probe fetch wait ({args.probe_fetch_wait} ms) included.",
            "    The embedded broker answers a waiting fetch only when its wait expires (trap 11).",
        ]
    if "observability" in r:
        o = r["observability"]
        out += [
            "(d) metrics + logging (info, json) on vs off (error, SEQGUARD_METRICS=false), worker CPU per event:",
            f"    on {o['on_cpu_us_per_event']} µs, off {o['off_cpu_us_per_event']} µs (medians of "
            f"{len(o['runs']) // 2} pairs): cost {o['cost']:+.1%}; throughput per worker CPU second "
            f"{round(1e6 / o['on_cpu_us_per_event']):,} on vs {round(1e6 / o['off_cpu_us_per_event']):,} off",
        ]
    out += [
        "-" * 78,
        f"JSON: {r['json_path']}",
        f"reproduce: {r['command']}",
        "profile a running worker: benchmarks/profile_worker.sh <worker pid> [seconds]",
        "=" * 78,
    ]
    return out
