#!/usr/bin/env bash
# Profile a running `seqguard worker` with py-spy (sampling; the worker needs no restart).
#
#   benchmarks/profile_worker.sh PID [SECONDS] [OUT_PREFIX]
#
# Writes OUT_PREFIX.txt (top functions by self and inclusive time, by package, by asyncio
# task, by thread), OUT_PREFIX defaulting to benchmarks/results/profile-<pid>-<date>, and the
# collapsed stacks (megabytes: kept out of git) to .pytest_cache/logs/<name>.raw;
# SVG=1 also records a flame graph OUT_PREFIX.svg (a second recording, after the first).
# Installs py-spy into .venv if it is missing. Needs ptrace rights on the worker
# (root, or the same user with kernel.yama.ptrace_scope=0; in Docker: --cap-add SYS_PTRACE).
#
# Other ways to look:
#   .venv/bin/py-spy top --pid PID                     # live, interactive
#   .venv/bin/py-spy dump --pid PID                    # one stack per thread, now
#   .venv/bin/py-spy record --pid PID --format speedscope -o profile.json   # https://speedscope.app
# To profile the worker during a benchmark: `.venv/bin/python -m benchmarks.throughput` runs
# phase (b') under py-spy by itself and writes benchmarks/results/profile-<date>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

pid=${1:?usage: benchmarks/profile_worker.sh PID [SECONDS] [OUT_PREFIX]}
seconds=${2:-20}
out=${3:-benchmarks/results/profile-${pid}-$(date +%Y-%m-%d)}
raw=.pytest_cache/logs/$(basename "$out").raw
mkdir -p "$(dirname "$out")" .pytest_cache/logs

if [ ! -x .venv/bin/py-spy ]; then
  .venv/bin/pip install --quiet py-spy
fi

# Collapsed stacks first (what the summary reads); py-spy's SVG needs a recording of its
# own, of a later moment, so it is made only when asked (SVG=1).
.venv/bin/py-spy record --pid "$pid" --duration "$seconds" --rate 100 --threads --full-filenames \
  --format raw -o "$raw"
if [ "${SVG:-0}" = 1 ]; then
  .venv/bin/py-spy record --pid "$pid" --duration "$seconds" --rate 100 -o "$out.svg"
fi
.venv/bin/python - "$raw" "$out.txt" <<'EOF'
import sys
from pathlib import Path

from benchmarks.profile_summary import summarize_profile

text, _ = summarize_profile(Path(sys.argv[1]), top=25)
Path(sys.argv[2]).write_text(text + "\n")
print(text)
EOF
echo "wrote $out.txt (stacks: $raw)"; if [ "${SVG:-0}" = 1 ]; then echo "and $out.svg"; fi
