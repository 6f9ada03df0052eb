#!/usr/bin/env python3
"""ReadSession at scale, two builds side by side: the 1,000,000-user database of
bench/run.sh's scale run, seeded once, then alternating rounds of wrk at 32 connections
on a fresh copy of it for each build, with the read cache's hits and misses over each
measured run (from /metrics).

    bench/scale_ab.py BINARY_A BINARY_B [ROUNDS] [USERS]

ROUNDS defaults to 2, USERS to 1,000,000 (the sessions, one per user, are imported
without a last use, as in the scale run, and a 100,000-token sample is drawn). Each
round is 1 s of warm-up and 5 s measured, the service at its default `info` level.
Prints one line per run, then the medians. Needs what bench/run.sh installs (wrk) and
its build: cargo build --release --bin users-service --examples. Traffic goes to
127.0.0.1 only; the work directory is removed at the end.
"""
import re
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def counter(url, name):
    """A counter's value on the service's /metrics, 0 when absent."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\d+)", text, re.M)
    return int(found.group(1)) if found else 0


def cache_counts(url):
    return (counter(url, "users_db_read_cache_hits_total"),
            counter(url, "users_db_read_cache_misses_total"))


def one_run(label, binary, work, data):
    database = work / "run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(work / "seed.db", database)
    argv = lambda port: [str(binary), "--listen", f"127.0.0.1:{port}",  # noqa: E731
                         "--database-url", f"sqlite://{database}"]
    with B.Server(argv, work, label).start() as server:
        B.run_wrk(server.url, "ReadSession", "pick:session_id", data, duration=1)
        hits, misses = cache_counts(server.url)
        fig = B.figures(B.run_wrk(server.url, "ReadSession", "pick:session_id", data))
        hits_after, misses_after = cache_counts(server.url)
    hits, misses = hits_after - hits, misses_after - misses
    ratio = hits / max(1, hits + misses)
    print(f"{label} {fig['rps']:.0f} req/s p50 {fig['p50_ms']:.2f} ms p99 {fig['p99_ms']:.2f} ms "
          f"cache hits {hits} misses {misses} ({ratio:.1%})", flush=True)
    return fig["rps"], fig["p50_ms"], ratio


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = (Path(arg).resolve() for arg in sys.argv[1:3])
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    users = int(sys.argv[4]) if len(sys.argv) > 4 else 1_000_000
    with tempfile.TemporaryDirectory(prefix="users-scale-ab-") as tmp:
        work = Path(tmp)
        phc = B.phc_hash(ROOT / "target" / "release" / "examples")
        data = B.generate(work / "data", users, users, 0, phc, seed=2)
        seed = f"sqlite://{work / 'seed.db'}"
        B.log(f"importing {users:,} users and sessions")
        B.run_import(a, seed, data["users"])
        B.run_import(a, seed, data["sessions"])
        runs = {"A": [], "B": []}
        for _ in range(rounds):
            for label, binary in (("A", a), ("B", b)):
                runs[label].append(one_run(label, binary, work, data["read_tokens"]))
        for label, figures in runs.items():
            rps, p50, ratio = (statistics.median(column) for column in zip(*figures))
            print(f"median {label}: {rps:,.0f} req/s, p50 {p50:.2f} ms, cache hits {ratio:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
