#!/usr/bin/env bash
# Clients generated from openapi.yaml, built and run against the server, with nothing
# edited by hand:
#   * Python: openapi-python-client must generate without a warning; the program
#     tests/clients/python/flow.py must pass `mypy --strict` against the generated
#     package, then run a full flow on both route families.
#   * TypeScript: openapi-typescript generates the types, openapi-fetch makes the calls;
#     tests/clients/ts/flow.ts must compile with `tsc --strict` and run the same flow,
#     and tests/clients/ts/probe.ts, which misspells a Login field, must not compile.
#
#   .ci/clients.sh BINARY
#
# BINARY is a built users-service. Installs the pinned tools (a Python virtualenv in
# the cache, the npm packages of tests/clients/ts/package-lock.json) when they are
# missing; each install and each run is cut off after 120 seconds.
set -euo pipefail

OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
MYPY_VERSION=2.4.1

if [ $# -ne 1 ]; then
  echo "usage: $0 BINARY" >&2
  exit 2
fi
bin=$1
if [ ! -x "$bin" ]; then
  echo "clients: $bin is not an executable (build the service first)" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
cd "$(dirname "$0")/.."
root=$(pwd)
for tool in node npm curl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "clients: '$tool' is not installed; this check needs Node.js (20 or later) with npm, curl and python3" >&2
    exit 2
  fi
done

ci_label=clients
# shellcheck source=.ci/server.sh
source .ci/server.sh

# ---- Python -------------------------------------------------------------------------
venv="${XDG_CACHE_HOME:-$HOME/.cache}/users-service-ci/clients-venv"
if ! "$venv/bin/openapi-python-client" --version 2>/dev/null | grep -qF "$OPENAPI_PYTHON_CLIENT_VERSION" ||
  ! "$venv/bin/mypy" --version 2>/dev/null | grep -qF "mypy $MYPY_VERSION"; then
  echo "== clients: installing openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION and mypy $MYPY_VERSION into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  timeout 120 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION" "mypy==$MYPY_VERSION"
fi
python_out="$work/python"
mkdir -p "$python_out"
echo "== clients: openapi-python-client generate"
(cd "$python_out" && timeout 120 "$venv/bin/openapi-python-client" generate \
  --path "$root/openapi.yaml" --meta none --output-path users_client \
  --config "$root/tests/clients/python/config.yaml") 2>&1 | tee "$work/python-generate.txt"
if grep -qiE 'warning|error' "$work/python-generate.txt"; then
  echo "clients: openapi-python-client reported problems (above)" >&2
  exit 1
fi
cp tests/clients/python/flow.py "$python_out/"
echo "== clients: mypy --strict flow.py"
(cd "$python_out" && timeout 120 "$venv/bin/mypy" --strict --cache-dir "$work/mypy-cache" flow.py)

# ---- TypeScript ---------------------------------------------------------------------
ts=tests/clients/ts
if [ -f "$ts/node_modules/.package-lock.json" ] &&
  [ ! "$ts/package-lock.json" -nt "$ts/node_modules/.package-lock.json" ] &&
  (cd "$ts" && npm ls --depth=0 >/dev/null 2>&1); then
  echo "== clients: npm packages already installed"
else
  echo "== clients: installing the npm packages (npm ci)"
  (cd "$ts" && timeout 120 npm ci --no-audit --no-fund)
fi
echo "== clients: openapi-typescript, tsc --strict"
rm -rf "$ts/generated" "$ts/out"
(cd "$ts" && timeout 120 npx openapi-typescript "$root/openapi.yaml" -o generated/schema.d.ts)
(cd "$ts" && timeout 120 npx tsc -p tsconfig.json)
probe_status=0
(cd "$ts" && timeout 120 npx tsc --strict --noEmit --module NodeNext --moduleResolution NodeNext \
  --target ES2022 probe.ts) >"$work/probe.txt" 2>&1 || probe_status=$?
if [ "$probe_status" -eq 0 ] || ! grep -q "'pasword' does not exist" "$work/probe.txt"; then
  cat "$work/probe.txt" >&2
  echo "clients: the misspelled Login field compiled; the generated types do not hold request bodies" >&2
  exit 1
fi
echo "== clients: the misspelled Login field is refused by tsc"

# ---- Both, against the server -------------------------------------------------------
key="ci-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
start_server clients USERS_API_KEY="$key"
status=0
echo "== clients: the Python flow against $base_url"
(cd "$python_out" && timeout 120 "$venv/bin/python" flow.py "$base_url" "$key") || status=1
echo "== clients: the TypeScript flow against $base_url"
(cd "$ts" && timeout 120 node out/flow.js "$base_url" "$key") || status=1
stop_server
if [ "$status" -ne 0 ]; then
  echo "---- server log" >&2
  tail -n 100 "$work/clients/server.log" >&2
  echo "== clients FAILED" >&2
  exit 1
fi
echo "== clients passed"
