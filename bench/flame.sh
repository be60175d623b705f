#!/usr/bin/env bash
# A py-spy flame graph of the relay's process tree (helper included) under the throughput bench.
#
#   bench/flame.sh OUT.svg TARGET RECIPIENTS [--consent] [extra bench args]
#   e.g. bench/flame.sh docs/flame-marketing.svg relay-dkim 1 --consent
#
# Runs `python -m bench` for TARGET at concurrency 10 with enough messages to last, waits for the
# relay's `serve` process, then samples it (and its children) with py-spy for 20 s at 200 Hz.
# py-spy is not a test dependency: `.venv/bin/pip install py-spy`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$1 target=$2 rcpts=$3; shift 3
py=.venv/bin/python
spy=.venv/bin/py-spy
[ -x "$spy" ] || { echo "bench/flame.sh: py-spy missing: .venv/bin/pip install py-spy" >&2; exit 2; }
log=$(mktemp)
timeout 900 "$py" -m bench --targets "$target" --messages 20000 --concurrency 10 --recipients "$rcpts" \
  --warmup 200 --out "$log.md" "$@" >"$log" 2>&1 &
bench=$!
pid=""
for _ in $(seq 1 60); do
  sleep 1
  # this bench's relay only: another checkout's bench may run the same target at the same time
  for candidate in $(pgrep -f "/$target/relay.toml serve" || true); do
    up=$candidate
    while [ "$up" -gt 1 ] && [ "$up" != "$bench" ]; do up=$(ps -o ppid= -p "$up" | tr -d ' '); [ -n "$up" ] || up=1; done
    [ "$up" = "$bench" ] && { pid=$candidate; break; }
  done
  [ -n "$pid" ] && break
done
[ -n "$pid" ] || { echo "bench/flame.sh: no relay process for $target (see $log)" >&2; kill $bench; exit 1; }
sleep 8  # past the warm-up
"$spy" record --pid "$pid" --subprocesses --duration 20 --rate 200 --nonblocking --format "${SPY_FORMAT:-flamegraph}" -o "$out"
pkill -P $bench || true; kill $bench 2>/dev/null || true
wait $bench 2>/dev/null || true
echo "bench/flame.sh: wrote $out"
