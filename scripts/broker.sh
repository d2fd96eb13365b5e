#!/usr/bin/env bash
# Start or stop a real Kafka-compatible broker (Tansu) on loopback for the test suite.
#
#   scripts/broker.sh start   # installs tansu if missing, starts it, prints the address
#   scripts/broker.sh stop
#   scripts/broker.sh status
#
# Environment: BROKER_PORT (default 19092), BROKER_DIR (default target/broker: pid, log,
# and schemas/, Tansu's schema registry: a `TOPIC.json` JSON schema there makes the broker
# reject records of TOPIC that do not match; tests use it to make one topic unwritable).
# Tansu is built from crates.io the first time (~12-20 min on 2 cores); later runs reuse
# the installed binary.
set -euo pipefail

TANSU_VERSION=0.6.0
PORT=${BROKER_PORT:-19092}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${BROKER_DIR:-$ROOT/target/broker}
PIDFILE=$DIR/tansu.pid
LOG=$DIR/tansu.log
export PATH="$HOME/.cargo/bin:$PATH"

install() {
  if command -v tansu >/dev/null 2>&1; then
    return
  fi
  echo "broker.sh: installing tansu $TANSU_VERSION (one-time build, about 12-20 minutes)" >&2
  cargo install tansu --version "$TANSU_VERSION" --features dynostore,libsql --locked >&2
}

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
  install
  mkdir -p "$DIR/schemas"
  if running; then
    echo "127.0.0.1:$PORT"
    return
  fi
  # Another process (a broker started with another BROKER_DIR) would answer the
  # readiness probe below in this broker's place, with other settings.
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "broker.sh: 127.0.0.1:$PORT is already in use by another process; stop it or set BROKER_PORT" >&2
    exit 1
  fi
  # Tansu resolves a file:// registry relative to its working directory.
  (cd "$DIR" && exec tansu broker \
    --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" \
    --storage-engine memory://tansu/ \
    --schema-registry "file://./schemas") >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  # Ready when the port accepts connections (bounded: 15 s).
  for _ in $(seq 1 150); do
    if running && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      echo "127.0.0.1:$PORT"
      return
    fi
    if ! running; then
      echo "broker.sh: tansu exited; log follows" >&2
      cat "$LOG" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "broker.sh: tansu did not listen on 127.0.0.1:$PORT within 15 s" >&2
  exit 1
}

stop() {
  if running; then
    kill "$(cat "$PIDFILE")" 2>/dev/null || true
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
    running && kill -9 "$(cat "$PIDFILE")" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
