#!/usr/bin/env bash
# Measure switchyard against the pipe limit on a real broker (Tansu), each system on a
# broker of its own that starts empty.
#
#   scripts/bench.sh --events 20000                      # throughput, 0 ms sink
#   scripts/bench.sh --rate 1000 --duration 30s --timeline
#
# Any `switchyard bench` flag except --brokers and --systems passes through. Why a fresh
# broker per system: Tansu's in-memory storage costs more per request as it fills (at
# 1,000 events/s its CPU climbs from about 0.5 to 1.1 cores within 15 s), so on a shared
# broker the system measured second would run against a slower broker than the first.
#
# Environment: BENCH_BROKER_PORT (default 19094) and BENCH_BROKER_DIR (default
# target/bench-broker), so that a test broker on 19092 is left alone.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export BROKER_PORT=${BENCH_BROKER_PORT:-19094}
export BROKER_DIR=${BENCH_BROKER_DIR:-$ROOT/target/bench-broker}
for arg in "$@"; do
  case "$arg" in
    --brokers* | --systems*)
      echo "bench.sh: $arg is set by this script (one fresh broker per system)" >&2
      exit 2
      ;;
  esac
done

cargo build --release --quiet
trap 'scripts/broker.sh stop >/dev/null 2>&1 || true' EXIT

rows=()
for system in pipe switchyard; do
  scripts/broker.sh stop >/dev/null 2>&1 || true
  rm -rf "$BROKER_DIR"
  scripts/broker.sh start >/dev/null
  out=$(target/release/switchyard bench --brokers "127.0.0.1:$BROKER_PORT" --systems "$system" "$@")
  echo "$out" | grep -v '^bench:' || true
  rows+=("$(echo "$out" | grep -E "^$system +events")")
done

# Row fields: system events N secs s rate ev/s p50 X ms p99 Y ms max Z ms peak RSS M MB cpu C s/10k
printf '%s\n%s\n' "${rows[0]}" "${rows[1]}" | awk '
  { rate[NR] = $6; p50[NR] = $9; p99[NR] = $12; cpu[NR] = $22 }
  END {
    printf "ratio switchyard / pipe limit (a fresh broker each): throughput %.2f, p50 %+.1f ms, p99 %+.1f ms, cpu/10k %.2f\n",
      rate[2] / rate[1], p50[2] - p50[1], p99[2] - p99[1], cpu[2] / cpu[1]
  }'
