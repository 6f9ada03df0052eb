# Sourced by the CI scripts that test a running users-service: a work directory removed
# on exit, and start_server / stop_server. The sourcing script sets $bin (the binary)
# and $ci_label (the prefix of its messages) first.

work=$(mktemp -d)
server_pid=
server_name=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_server NAME [VAR=VALUE...]: starts the binary on a fresh database with only the
# environment given (none of the caller's USERS_* settings), waits for /health, and sets
# $base_url. The server's log is $work/NAME/server.log.
start_server() {
  local name=$1
  shift
  local port
  port=$(free_port)
  base_url="http://127.0.0.1:$port"
  server_name=$name
  mkdir -p "$work/$name"
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG=warn \
    USERS_LISTEN="127.0.0.1:$port" \
    DATABASE_URL="sqlite://$work/$name/users.db" \
    "$@" \
    "$bin" >"$work/$name/server.log" 2>&1 &
  server_pid=$!
  local _
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null --max-time 2 "$base_url/health" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "$ci_label: the server exited before answering /health:" >&2
      cat "$work/$name/server.log" >&2
      server_pid=
      return 1
    fi
    sleep 0.1
  done
  echo "$ci_label: the server did not answer /health within 10 seconds:" >&2
  cat "$work/$name/server.log" >&2
  return 1
}
