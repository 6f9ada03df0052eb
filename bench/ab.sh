#!/usr/bin/env bash
# Two builds of the service side by side on ReadSession: alternating rounds of wrk at
# 32 connections over loopback, each round opening with a sample of the HTTP ceiling
# (examples/http_ceiling.rs), so that a change is judged against the machine's drift.
#
#   bench/ab.sh BINARY_A BINARY_B [ROUNDS] [RUST_LOG_A] [RUST_LOG_B]
#
# Each service starts on a fresh SQLite file in a temporary directory with the
# settings bench/bench.py uses (no limits on the load generator), logging at
# RUST_LOG_A / RUST_LOG_B (default: warn for both; `info` is the service's default) to
# a file, and is checked with 20 live sessions. ROUNDS defaults to 5; every wrk run is
# 2 s of warm-up and 5 s measured. AB_CALL picks the call: ReadSession (the default),
# Read (by id) or Search (by username), over the 20 accounts. Prints one line per run:
# the label and its req/s, then the medians. Needs wrk, curl and python3 (bench/run.sh installs wrk), and the
# ceiling built: cargo build --release --examples.
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 BINARY_A BINARY_B [ROUNDS] [RUST_LOG_A] [RUST_LOG_B]" >&2
  exit 2
fi
a=$1 b=$2 rounds=${3:-5} log_a=${4:-warn} log_b=${5:-warn}
call=${AB_CALL:-ReadSession}
case $call in
  ReadSession) field=session_id ;;
  Read) field=id ;;
  Search) field=username ;;
  *) echo "ab: AB_CALL is ReadSession, Read or Search, not $call" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ceiling=target/release/examples/http_ceiling
for tool in wrk curl python3 "$a" "$b" "$ceiling"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "ab: $tool is missing" >&2; exit 2; }
done
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_for() { # URL PID
  local _
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "ab: the server exited" >&2; return 1; }
    sleep 0.1
  done
  echo "ab: no answer from $1" >&2
  return 1
}
measure() { # URL: warm-up, then the measured req/s
  wrk -t2 -c32 -d2 -s bench/rpc.lua "$1" -- "$call" "pick:$field" "$work/keys" 2 >/dev/null
  wrk -t2 -c32 -d5 -s bench/rpc.lua "$1" -- "$call" "pick:$field" "$work/keys" 2 |
    awk '/^Requests\/sec/ {print $2}'
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; }

ceiling_round() {
  local port
  port=$(free_port)
  python3 -c 'import secrets; [print(secrets.token_urlsafe(32)) for _ in range(20)]' >"$work/keys"
  "$ceiling" "127.0.0.1:$port" >/dev/null 2>&1 &
  pid=$!
  wait_for "http://127.0.0.1:$port/health" "$pid"
  echo "ceiling $(measure "http://127.0.0.1:$port")"
  stop
}
service_round() { # LABEL BINARY RUST_LOG
  local port i
  port=$(free_port)
  rm -f "$work"/users.db*
  env -i PATH="$PATH" RUST_LOG="$3" USERS_LISTEN="127.0.0.1:$port" \
    DATABASE_URL="sqlite://$work/users.db" USERS_LOGIN_MAX_FAILURES=0 \
    USERS_LOGIN_MAX_FAILURES_PER_IP=0 USERS_CREATE_PER_HOUR=0 \
    USERS_MAX_CONNECTIONS_PER_IP=1024 "$2" 2>"$work/$1.log" &
  pid=$!
  wait_for "http://127.0.0.1:$port/health" "$pid"
  : >"$work/keys"
  for i in $(seq 1 20); do
    id=$(curl -fsS "http://127.0.0.1:$port/users/Users/Create" \
      -d "{\"username\":\"ab$i\",\"email\":\"ab$i@example.com\",\"password\":\"bench-password-1\"}" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["user"]["id"])')
    session=$(curl -fsS "http://127.0.0.1:$port/users/Users/Login" \
      -d "{\"username\":\"ab$i\",\"password\":\"bench-password-1\"}" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["session"]["id"])')
    case $call in
      ReadSession) echo "$session" ;;
      Read) echo "$id" ;;
      Search) echo "ab$i" ;;
    esac >>"$work/keys"
  done
  echo "$1 $(measure "http://127.0.0.1:$port")"
  stop
}

for _ in $(seq 1 "$rounds"); do
  ceiling_round
  service_round A "$a" "$log_a"
  service_round B "$b" "$log_b"
done | tee "$work/results"
python3 - "$work/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    label, rate = line.split()
    runs.setdefault(label, []).append(float(rate))
ceiling = statistics.median(runs["ceiling"])
for label, rates in runs.items():
    median = statistics.median(rates)
    print(f"median {label}: {median:,.0f} req/s ({median / ceiling:.0%} of the ceiling)")
PY
