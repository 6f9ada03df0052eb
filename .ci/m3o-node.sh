#!/usr/bin/env bash
# M3O's own npm SDKs against a running users-service: tests/m3o-node/client.test.mjs
# drives the M3O User API surface (POST /v1/user/<Method>) with the `m3o` and
# `@m3o/m3o-node` packages, changing only the base address, as an app written for the
# hosted platform would. Then tests/m3o-node/tenants.mjs drives a second server, with
# two tenants, through the same SDK holding each tenant's own key.
#
#   .ci/m3o-node.sh BINARY
#
# BINARY is a built users-service (CI passes target/debug/users-service); this script
# builds nothing. It installs the pinned packages from tests/m3o-node/package-lock.json
# (quick when node_modules is current), starts BINARY with an admin key on a fresh
# SQLite database and a free loopback port, and runs the tests against it. The install
# and the test run are each cut off, and fail, after 120 seconds.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 BINARY" >&2
  exit 2
fi
bin=$1
if [ ! -x "$bin" ]; then
  echo "m3o-node: $bin is not an executable (build the service first)" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
cd "$(dirname "$0")/.."
tests_dir=tests/m3o-node

for tool in node npm curl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "m3o-node: '$tool' is not installed; this check needs Node.js (20 or later) with npm, curl and python3" >&2
    exit 2
  fi
done

# ---- The packages, exactly as locked --------------------------------------------------
# `npm ci` wipes and reinstalls node_modules, so skip it when the installed tree already
# matches the lock file (npm records what it installed in node_modules/.package-lock.json).
if [ -f "$tests_dir/node_modules/.package-lock.json" ] &&
  [ ! "$tests_dir/package-lock.json" -nt "$tests_dir/node_modules/.package-lock.json" ] &&
  (cd "$tests_dir" && npm ls --depth=0 >/dev/null 2>&1); then
  echo "== m3o-node: packages already installed"
else
  echo "== m3o-node: installing the packages (npm ci)"
  if ! (cd "$tests_dir" && timeout 120 npm ci --no-audit --no-fund); then
    echo "m3o-node: npm ci failed in $tests_dir (is the npm registry reachable?)" >&2
    exit 1
  fi
fi

# ---- The server -------------------------------------------------------------------
ci_label=m3o-node
# shellcheck source=.ci/server.sh
source .ci/server.sh
key="ci-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# The defaults are what is tested: sign-up open, the limits on.
start_server m3o USERS_API_KEY="$key"

# ---- The tests ----------------------------------------------------------------------
# The SDK's HTTP client (axios) honours http_proxy; keep the loopback server off any
# proxy the machine is configured with.
echo "== m3o-node: node --test $tests_dir/ against $base_url"
status=0
USERS_BASE_URL="$base_url" USERS_API_KEY="$key" \
  no_proxy="127.0.0.1${no_proxy:+,$no_proxy}" NO_PROXY="127.0.0.1${NO_PROXY:+,$NO_PROXY}" \
  timeout --kill-after=10 120 node --test "$tests_dir/" || status=$?
stop_server

# ---- The same SDK against a service with tenants, each app holding its tenant's key --
if [ "$status" -eq 0 ]; then
  acme_key="acme-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  globex_key="globex-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
  mkdir -p "$work/tenants"
  printf 'acme %s\nglobex %s\n' "$acme_key" "$globex_key" >"$work/tenants/keys"
  start_server tenants USERS_API_KEY="$key" USERS_TENANCY=namespace USERS_TENANTS=acme,globex \
    USERS_TENANT_KEYS_FILE="$work/tenants/keys"
  echo "== m3o-node: node --test $tests_dir/tenants.mjs against $base_url (tenants)"
  USERS_BASE_URL="$base_url" USERS_ACME_KEY="$acme_key" USERS_GLOBEX_KEY="$globex_key" \
    no_proxy="127.0.0.1${no_proxy:+,$no_proxy}" NO_PROXY="127.0.0.1${NO_PROXY:+,$NO_PROXY}" \
    timeout --kill-after=10 60 node --test "$tests_dir/tenants.mjs" || status=$?
  stop_server
fi

if [ "$status" -ne 0 ]; then
  if [ "$status" -eq 124 ]; then
    echo "m3o-node: the tests did not finish within 120 seconds" >&2
  fi
  echo "---- server log" >&2
  tail -n 100 "$work/$server_name/server.log" >&2
  echo "== m3o-node FAILED" >&2
  exit 1
fi
echo "== m3o-node passed"
