#!/usr/bin/env bash
# Measure switchyard against the pipe limit on Apache Kafka 4.4, both systems in one run
# of this script, on one broker this script starts for the purpose.
#
#   scripts/bench.sh --events 20000                       # throughput, 0 ms sink
#   scripts/bench.sh --events 40000 --sink-latency-ms 50 --concurrency 512
#   scripts/bench.sh --rate 1000 --duration 60s --timeline
#
# Any `switchyard bench` flag except --brokers and --systems passes through. Each run of
# the script formats a fresh broker, warms it (a short pipe run: the JVM compiles the
# broker's hot paths in its first seconds, and a cold broker would favour whichever
# system runs second), then measures the pipe and switchyard one after the other, each
# on topics of its own, and prints both rows and their ratio.
#
# Environment: BENCH_BROKER_PORT (default 19094; its controller listens on the next
# port) and BENCH_BROKER_DIR (default target/bench-broker), so that a test broker on
# 19092 is left alone; BENCH_ORDER ("pipe switchyard", the default, or the reverse; "board
# board-sse" measures switchyard with its run board on, without and with 50 event-stream
# clients).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export BROKER_PORT=${BENCH_BROKER_PORT:-19094}
export BROKER_DIR=${BENCH_BROKER_DIR:-$ROOT/target/bench-broker}
unset BROKER_SASL_PORT BROKER_CONTROLLER_PORT
ORDER=${BENCH_ORDER:-pipe switchyard}
for arg in "$@"; do
  case "$arg" in
    --brokers* | --systems*)
      echo "bench.sh: $arg is set by this script" >&2
      exit 2
      ;;
  esac
done

cargo build --release --locked --quiet
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
trap 'scripts/broker.sh stop >/dev/null 2>&1 || true' EXIT
scripts/broker.sh stop >/dev/null 2>&1 || true
rm -rf "$BROKER_DIR"
BROKERS=$(scripts/broker.sh start)
"$BIN" bench --brokers "$BROKERS" --systems pipe --events 20000 >/dev/null

# The broker's CPU seconds so far (user + system), from /proc.
broker_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$(cat "$BROKER_DIR/kafka.pid")/stat"
}

declare -A rows
for system in $ORDER; do
  before=$(broker_cpu)
  out=$("$BIN" bench --brokers "$BROKERS" --systems "$system" "$@")
  after=$(broker_cpu)
  echo "$out" | grep -v '^bench:' || true
  rows[$system]=$(echo "$out" | grep -E "^$system +events")
  events=$(echo "${rows[$system]}" | awk '{ print $3 }')
  # Includes the run's start and end (topic creation, the group joining, the drain).
  awk -v s="$system" -v b="$before" -v a="$after" -v n="$events" 'BEGIN {
    printf "%-10s broker CPU %.1f s during the run, %.2f s/10k events\n", s, a - b, (a - b) * 10000 / n }'
done

# Row fields: system events N secs s rate ev/s p50 X ms p99 Y ms max Z ms peak RSS M MB cpu C s/10k p999 W ms
ratio() {
  printf '%s\n%s\n' "${rows[$1]}" "${rows[$2]}" | awk -v a="$2" -v b="$1" '
    { rate[NR] = $6; p50[NR] = $9; p99[NR] = $12; cpu[NR] = $22; p999[NR] = $25 }
    END {
      printf "ratio %s / %s (one warmed broker): throughput %.2f, p50 %+.1f ms, p99 %+.1f ms, p999 %+.1f ms, cpu/10k %.2f\n",
        a, b, rate[2] / rate[1], p50[2] - p50[1], p99[2] - p99[1], p999[2] - p999[1], cpu[2] / cpu[1]
    }'
}
if [[ -n "${rows[pipe]:-}" && -n "${rows[switchyard]:-}" ]]; then ratio pipe switchyard; fi
# BENCH_ORDER="board board-sse": the run board with no clients, then with
# --board-clients (default 50) event-stream clients.
if [[ -n "${rows[board]:-}" && -n "${rows[board-sse]:-}" ]]; then ratio board board-sse; fi
