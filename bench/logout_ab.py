#!/usr/bin/env python3
"""Logout on SQLite, builds side by side: alternating rounds on fresh copies of one
seeded database, so that a change of the write path is judged against the machine's
drift.

    bench/logout_ab.py BINARY[,BINARY...] [ROUNDS] [SECONDS] [SESSIONS]

Seeds 1,000 users and SESSIONS sessions (default 150,000) through each binary's own
`import` once, then, for every round and every binary in turn, starts it on a fresh
copy of its database and runs wrk's Logout walk at 32 connections: 1 s of warm-up on
sessions of their own, then SECONDS (default 5) measured. A round that runs out of
sessions says so (`wraps` above 0) and is not a fair figure. Prints one line per run
and the median of each binary. Needs what bench/run.sh installs (wrk) and the bench
examples built: cargo build --release --examples.
"""
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binaries = sys.argv[1].split(",")
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    sessions = int(sys.argv[4]) if len(sys.argv) > 4 else 150_000
    work = Path(tempfile.mkdtemp(prefix="logout-ab-"))
    try:
        logs = work / "logs"
        logs.mkdir()
        phc = B.phc_hash(B.ROOT / "target" / "release" / "examples")
        data = B.generate(work / "seed", 1000, 1000, sessions, phc, seed=1)
        B.split_logout(data)
        seeded = {}
        for n, binary in enumerate(binaries):
            db = work / f"seed-{n}.db"
            for part in ("users", "sessions"):
                B.run_import(binary, f"sqlite://{db}", data[part])
            seeded[binary] = db
        results = {binary: [] for binary in binaries}
        for r in range(rounds):
            for n, binary in enumerate(binaries):
                db = work / "run.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                for suffix in ("", "-wal"):
                    if Path(f"{seeded[binary]}{suffix}").exists():
                        shutil.copy(f"{seeded[binary]}{suffix}", f"{db}{suffix}")
                server = B.Server(lambda port: [binary, "--listen", f"127.0.0.1:{port}",
                                                "--database-url", f"sqlite://{db}"],
                                  logs, f"logout-{n}")
                server.start()
                try:
                    B.run_wrk(server.url, "Logout", "walk:session_id", data["logout_warm"],
                              duration=1)
                    fig = B.run_wrk(server.url, "Logout", "walk:session_id",
                                    data["logout_main"], duration=seconds)
                finally:
                    server.stop()
                rps = fig["requests"] / (fig["duration_us"] / 1e6)
                latency = fig["latency_us"]
                results[binary].append(rps)
                print(f"round {r} {binary}: {rps:.0f} req/s  p50 {latency['p50'] / 1000:.2f} ms"
                      f"  p99 {latency['p99'] / 1000:.2f} ms  errors "
                      f"{sum(fig['errors'].values())}  wraps {fig['wraps']}", flush=True)
        for binary, figures in results.items():
            figures.sort()
            print(f"{binary}: median {figures[len(figures) // 2]:.0f} req/s "
                  f"({', '.join(f'{x:.0f}' for x in figures)})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
