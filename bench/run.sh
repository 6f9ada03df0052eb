#!/usr/bin/env bash
# Builds users-service in release and runs the benchmark: see BENCHMARKS.md.
#
#   bench/run.sh            the full run (SQLite, 1,000,000-user scale run, and PostgreSQL
#                           when TEST_DATABASE_URL is set); under 10 minutes on 2 cores
#   bench/run.sh --quick    a short smoke run (seconds per figure, 20,000-user scale run)
#
# Other options (passed to bench/bench.py): --skip-scale, --skip-postgres, --keep,
# --output FILE. Set BENCH_NO_BUILD=1 to use the binaries already in target/release.
# Installs wrk (and python3, and psql when TEST_DATABASE_URL is set) from Debian's
# packages when they are missing. Traffic goes to 127.0.0.1 only.
set -euo pipefail

cd "$(dirname "$0")/.."

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "bench: $* missing and not root: install it (apt-get install $*)" >&2
            exit 1
        fi
    fi
    echo "bench: installing $* from Debian's packages" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

command -v wrk >/dev/null 2>&1 || apt_install wrk
command -v python3 >/dev/null 2>&1 || apt_install python3
if [ -n "${TEST_DATABASE_URL:-}" ]; then
    command -v psql >/dev/null 2>&1 || apt_install postgresql-client
fi

# 1,000 concurrent clients need more than the default 1,024 descriptors on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    echo "bench: the open-files limit is $(ulimit -n); the 1,000-client scenario needs 4096" >&2
    exit 1
fi

if [ -z "${BENCH_NO_BUILD:-}" ]; then
    build_started=$(date +%s)
    cargo build --release --bin users-service --examples
    echo "bench: release build took $(( $(date +%s) - build_started )) s" >&2
fi

# A hard stop well past the 10-minute budget, should anything hang.
exec timeout --signal=TERM --kill-after=30 1500 python3 bench/bench.py "$@"
