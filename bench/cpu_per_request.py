#!/usr/bin/env python3
"""Where the machine's CPU goes per request: the HTTP ceiling (examples/http_ceiling.rs)
and the service, each driven by wrk at 32 connections with the same bodies, in
alternating rounds. For each run: the rate, the server's CPU time per request, wrk's,
and the share of the machine's cores left idle. On a machine whose cores both the
server and wrk use, the rate is what the sum of the two per-request costs allows, so
this says how much of a gap between the two rates is the service's own work and how
much is wrk's work on the service's answers.

    bench/cpu_per_request.py BINARY [ROUNDS] [CALL]

ROUNDS defaults to 3; CALL is ReadSession (the default), Read or Search, over 20
accounts. Each run is 2 s of warm-up and 6 s measured, the service at its default
`info` level on a fresh SQLite file. Needs wrk and the build:
cargo build --release --bin users-service --examples. Traffic goes to 127.0.0.1 only.
"""
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"ReadSession": "session_id", "Read": "id", "Search": "username"}
MEASURED_S = 6


def cpu_ticks(pid):
    """User and system time of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def keys_for(server, call, work):
    """20 accounts' keys for `call`: made on the service; random ones for the ceiling."""
    path = work / "keys"
    if server is None:
        keys = [secrets.token_urlsafe(32) for _ in range(20)]
    else:
        keys = []
        for i in range(20):
            account = {"username": f"cpu{i}", "email": f"cpu{i}@example.com",
                       "password": B.PASSWORD}
            user = post(server.url + "/users/Users/Create", account)["user"]
            session = post(server.url + "/users/Users/Login",
                           {"username": account["username"], "password": B.PASSWORD})
            keys.append({"ReadSession": session["session"]["id"], "Read": user["id"],
                         "Search": account["username"]}[call])
    B.write_lines(path, keys)
    return path


def measure(label, server, call, work):
    keys = keys_for(None if label == "ceiling" else server, call, work)
    mode = f"pick:{FIELDS[call]}"
    B.run_wrk(server.url, call, mode, keys, duration=2)
    hz = os.sysconf("SC_CLK_TCK")
    server_before, wrk_before = cpu_ticks(server.proc.pid), os.times()
    started = time.perf_counter()
    fig = B.figures(B.run_wrk(server.url, call, mode, keys, duration=MEASURED_S))
    elapsed = time.perf_counter() - started
    server_s = (cpu_ticks(server.proc.pid) - server_before) / hz
    wrk_after = os.times()
    wrk_s = ((wrk_after.children_user + wrk_after.children_system)
             - (wrk_before.children_user + wrk_before.children_system))
    requests = fig["requests"]
    row = {"rps": fig["rps"], "server_us": server_s / requests * 1e6,
           "wrk_us": wrk_s / requests * 1e6,
           "idle": max(0.0, 1 - (server_s + wrk_s) / elapsed / os.cpu_count())}
    print(f"{label:8} {row['rps']:>9,.0f} req/s  server {row['server_us']:5.2f} µs/req  "
          f"wrk {row['wrk_us']:5.2f} µs/req  idle {row['idle']:.0%}", flush=True)
    return row


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = Path(sys.argv[1]).resolve()
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    call = sys.argv[3] if len(sys.argv) > 3 else "ReadSession"
    if call not in FIELDS:
        print(f"CALL is one of {', '.join(FIELDS)}", file=sys.stderr)
        return 2
    ceiling = ROOT / "target" / "release" / "examples" / "http_ceiling"
    runs = {"ceiling": [], "service": []}
    with tempfile.TemporaryDirectory(prefix="users-cpu-") as tmp:
        work = Path(tmp)
        for n in range(rounds):
            with B.Server(lambda port: [str(ceiling), f"127.0.0.1:{port}"], work,
                          "ceiling").start() as server:
                runs["ceiling"].append(measure("ceiling", server, call, work))
            database = work / f"users-{n}.db"
            argv = lambda port: [str(binary), "--listen", f"127.0.0.1:{port}",  # noqa: E731
                                 "--database-url", f"sqlite://{database}"]
            with B.Server(argv, work, "service").start() as server:
                runs["service"].append(measure("service", server, call, work))
    for label, rows in runs.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"median {label}: {median['rps']:,.0f} req/s, server {median['server_us']:.2f} "
              f"µs/req, wrk {median['wrk_us']:.2f} µs/req, idle {median['idle']:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
