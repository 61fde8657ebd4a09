"""A py-spy profile of a worker in a few lines: finding py-spy, then self and inclusive time per
function, self time per package, time per asyncio callback and where logging is called from,
out of py-spy's raw stacks. Read by benchmarks.throughput (b') and benchmarks/profile_worker.sh.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.measure import ROOT


def py_spy() -> Path | None:
    found = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy")
    return Path(found) if found and Path(found).exists() else None


def _func(frame: str) -> tuple[str, str]:
    """``name (path/file.py:123)`` -> (``name (path/file.py)``, top-level package or module)."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rpartition(":")[0] or where
    path = path.replace(str(ROOT) + "/", "")
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    package = path.split("/", 1)[0].removesuffix(".py")
    return f"{name} ({path})", package


def _task(funcs: list[tuple[str, str]]) -> str:
    """What the event loop was running: the two frames under the innermost Handle._run."""
    names = [name.split(" (")[0] for name, _ in funcs]
    for i in range(len(names) - 1, -1, -1):
        if names[i] == "Handle._run":
            below = names[i + 1 : i + 3]
            return " > ".join(below) if below else "Handle._run (itself)"
    return "outside callbacks: " + " > ".join(names[-2:])


def summarize_profile(raw: Path, top: int = 20) -> tuple[str, dict[str, Any]]:
    """Self and inclusive time per function, and self time per package, from py-spy raw output."""
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    tasks: Counter[str] = Counter()
    logging_callers: Counter[str] = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread, frames = frames[0], frames[1:]
        total += count
        threads[thread.split(": ", 1)[-1]] += count
        if not frames:
            continue
        funcs = [_func(f) for f in frames]
        leaf, package = funcs[-1]
        self_time[leaf] += count
        packages[package] += count
        for name in {f for f, _ in funcs}:
            inclusive[name] += count
        tasks[_task(funcs)] += count
        for i, (_, package) in enumerate(funcs):
            if package == "logging" and i > 0:
                logging_callers[funcs[i - 1][0]] += count
                break

    def pct(c: int) -> float:
        return round(100 * c / max(1, total), 1)

    lines = [f"py-spy samples: {total} (non-idle; all threads)", "", "Samples by thread:"]
    lines += [f"  {pct(c):5.1f}%  {t}" for t, c in threads.most_common()]
    lines += ["", "Self time by package (leaf frame's module):"]
    lines += [f"  {pct(c):5.1f}%  {p}" for p, c in packages.most_common(15)]
    lines += ["", "Inclusive time by asyncio callback or task (the two frames under Handle._run):"]
    lines += [f"  {pct(c):5.1f}%  {t}" for t, c in tasks.most_common(15)]
    lines += ["", f"Logging (inclusive): {pct(sum(logging_callers.values()))}%, called from:"]
    lines += [f"  {pct(c):5.1f}%  {f}" for f, c in logging_callers.most_common(5)]
    lines += ["", f"Top {top} functions by self time:"]
    lines += [f"  {pct(c):5.1f}%  {f}" for f, c in self_time.most_common(top)]
    lines += ["", f"Top {top} seqguard functions (workers/, tables/) by inclusive time:"]
    ours = [(f, c) for f, c in inclusive.most_common() if "(workers/" in f or "(tables/" in f]
    lines += [f"  {pct(c):5.1f}%  {f}" for f, c in ours[:top]]
    lines += ["", f"Top {top} functions by inclusive time:"]
    lines += [f"  {pct(c):5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    summary = {
        "samples": total,
        "threads": {t: pct(c) for t, c in threads.most_common()},
        "packages_self_pct": {p: pct(c) for p, c in packages.most_common(15)},
        "top_self_pct": [[f, pct(c)] for f, c in self_time.most_common(top)],
        "top_seqguard_inclusive_pct": [[f, pct(c)] for f, c in ours[:top]],
        "tasks_pct": [[t, pct(c)] for t, c in tasks.most_common(15)],
        "logging_pct": pct(sum(logging_callers.values())),
    }
    return "\n".join(lines), summary
