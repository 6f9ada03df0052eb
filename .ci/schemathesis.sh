#!/usr/bin/env bash
# Schemathesis against a running users-service: requests generated from openapi.yaml
# (valid and invalid ones, for every operation) must get no 5xx, and only answers whose
# status, content type, headers and body the document describes.
#
#   .ci/schemathesis.sh BINARY [SCHEMA]
#
# BINARY is a built users-service (CI passes target/debug/users-service after
# `cargo test`); this script builds nothing. SCHEMA is the document to test against;
# by default the one the server itself serves at /openapi.yaml. Two servers are tested
# in turn, each on a fresh SQLite database and a free loopback port:
#   1. without an admin key and with the brute-force and sign-up limits off, so every
#      operation is reachable and generated logins do not lock accounts;
#   2. with an admin key and the default limits: first without sending the key, so the
#      methods outside the public set answer 401 and Login, UpdatePassword and Create
#      soon answer 429, answers that must conform to the document too; then sending
#      the key, checking as well that requests without it are still refused.
#
# Tunables (environment): SCHEMATHESIS_EXAMPLES (cases per operation in the first run,
# default 100), SCHEMATHESIS_KEYED_EXAMPLES (second run, default 25) and
# SCHEMATHESIS_SEED (fixed by default so that a run is reproducible; set another to
# explore further). The three runs take about two minutes in all on two cores (the
# first, with 100 cases per operation, about one); each is cut off, and fails, past a
# time limit set well above that, so that only a hang fails this way.
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 BINARY [SCHEMA]" >&2
  exit 2
fi
bin=$1
schema_override=${2:-}
if [ ! -x "$bin" ]; then
  echo "schemathesis: $bin is not an executable (build the service first)" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
if [ -n "$schema_override" ] && [ -f "$schema_override" ]; then
  schema_override=$(cd "$(dirname "$schema_override")" && pwd)/$(basename "$schema_override")
fi
examples=${SCHEMATHESIS_EXAMPLES:-100}
keyed_examples=${SCHEMATHESIS_KEYED_EXAMPLES:-25}
seed=${SCHEMATHESIS_SEED:-20260601}
# Seconds each run may take: the keyed runs take about a minute on a fast 2-core
# machine and up to two on a slower one, so their bound leaves room for both.
open_limit=${SCHEMATHESIS_OPEN_SECONDS:-300}
keyed_limit=${SCHEMATHESIS_KEYED_SECONDS:-180}

# ---- Schemathesis, in a virtualenv of its own (quick when already there) -------------
venv="${XDG_CACHE_HOME:-$HOME/.cache}/users-service-ci/venv"
st="$venv/bin/st"
if ! "$st" --version 2>/dev/null | grep -qF "version $SCHEMATHESIS_VERSION"; then
  echo "== installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION"
  "$st" --version
fi

# ---- The server -------------------------------------------------------------------
ci_label=schemathesis
# shellcheck source=.ci/server.sh
source "$(dirname "$0")/server.sh"

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance

# run_schemathesis NAME MAX_EXAMPLES TIME_LIMIT CHECKS [EXTRA ST ARGS...]
run_schemathesis() {
  local name=$1 max_examples=$2 time_limit=$3 run_checks=$4
  shift 4
  local location=${schema_override:-$base_url/openapi.yaml}
  local args=(run "$location" --url "$base_url"
    --checks "$run_checks"
    --max-examples "$max_examples"
    --seed "$seed"
    --workers 1
    --request-timeout 30
    --continue-on-failure
    --generation-database none
    --no-color
    "$@")
  echo "== schemathesis ($name): $location against $base_url, $max_examples examples per operation, seed $seed"
  local status=0 output="$work/schemathesis-output.txt"
  (cd "$work" && timeout --signal=INT --kill-after=10 "$time_limit" "$st" "${args[@]}") 2>&1 |
    tee "$output" || status=${PIPESTATUS[0]}
  # Schemathesis reports its own crashes (an exception in its test-case generator) as
  # ERRORS and the server's faults as FAILURES. A run with errors alone says nothing
  # about the server, so it is run once more; failures are never retried. (It runs one
  # worker: with two, the generator's threads parsed source code at once, which
  # CPython 3.11's `ast` does not survive: "AST constructor recursion depth mismatch".)
  if [ "$status" -ne 0 ] && grep -q '= ERRORS =' "$output" && ! grep -q '= FAILURES =' "$output"; then
    echo "schemathesis ($name): the tool itself failed (no check failed); running once more" >&2
    status=0
    (cd "$work" && timeout --signal=INT --kill-after=10 "$time_limit" "$st" "${args[@]}") || status=$?
  fi
  if [ "$status" -ne 0 ]; then
    if [ "$status" -eq 124 ] || [ "$status" -eq 130 ]; then
      echo "schemathesis ($name): did not finish within ${time_limit}s" >&2
    fi
    echo "---- server log ($server_name)" >&2
    tail -n 50 "$work/$server_name/server.log" >&2
    return "$status"
  fi
}

failed=0

start_server open \
  USERS_LOGIN_MAX_FAILURES=0 USERS_LOGIN_MAX_FAILURES_PER_IP=0 USERS_CREATE_PER_HOUR=0
run_schemathesis open "$examples" "$open_limit" "$checks" || failed=1
stop_server

# The limits keep their defaults here: generated logins soon meet the lockout and
# generated sign-ups the hourly limit, so the 429 answers are checked as well. Then the
# same server with the key sent: every method must work with it, and (ignored_auth)
# still refuse requests without it or with a wrong one.
key="ci-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
start_server keyed USERS_API_KEY="$key"
run_schemathesis "keyed, no key sent" "$keyed_examples" "$keyed_limit" "$checks" || failed=1
run_schemathesis "keyed, key sent" "$keyed_examples" "$keyed_limit" "$checks,ignored_auth" \
  --header "Authorization: Bearer $key" || failed=1
stop_server

if [ "$failed" -ne 0 ]; then
  echo "== schemathesis FAILED (seed $seed: SCHEMATHESIS_SEED=$seed reproduces it)" >&2
  exit 1
fi
echo "== schemathesis passed"
