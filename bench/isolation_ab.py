#!/usr/bin/env python3
"""The isolation scenario of bench/run.sh for several `--hash-nice` values of one
build: 8 clients on ReadSession alone, then while 64 others hammer Login, in
alternating rounds on one 1,000-user database, each round on a freshly started server.

    bench/isolation_ab.py BINARY NICE [NICE ...] [--rounds N]

N defaults to 3. Each figure is 5 s after 1 s of warm-up; Login starts 1.5 s before
the loaded ReadSession run and ends 1.5 s after it, as in bench/run.sh. Prints one
line per run (ReadSession alone, under the flood, the share of its rate it kept, its
p99 there, and Login's rate and p50/p99 during the flood), then the medians per nice
value. Needs what bench/run.sh installs (wrk) and its build: cargo build --release
--bin users-service --examples. Traffic goes to 127.0.0.1 only; the work directory is
removed at the end.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
USERS = 1_000
DURATION = 5


def one_run(binary, nice, work, data):
    argv = lambda port: [str(binary), "--listen", f"127.0.0.1:{port}",  # noqa: E731
                         "--database-url", f"sqlite://{work / 'bench.db'}",
                         "--hash-nice", str(nice)]
    with B.Server(argv, work, f"nice-{nice}").start() as server:
        read = lambda seconds: B.run_wrk(  # noqa: E731
            server.url, "ReadSession", "pick:session_id", data["read_tokens"], 8, 2,
            seconds, 10)
        read(1)
        alone = B.figures(read(DURATION))
        login = B.BackgroundWrk(server.url, "Login", "login", data["names"], 64, 1,
                                DURATION + 3, 30, B.PASSWORD)
        time.sleep(1.5)
        loaded = B.figures(read(DURATION))
        hammer = B.figures(login.result())
    kept = loaded["rps"] / alone["rps"] if alone["rps"] else 0.0
    print(f"nice {nice:2}: ReadSession alone {alone['rps']:,.0f} req/s, under Login "
          f"{loaded['rps']:,.0f} req/s ({kept:.1%} kept), p99 {loaded['p99_ms']:.2f} ms; "
          f"Login {hammer['rps']:.1f} req/s, p50 {hammer['p50_ms']:.0f} ms, "
          f"p99 {hammer['p99_ms']:.0f} ms, errors {hammer['errors']}", flush=True)
    return kept, loaded["p99_ms"], hammer["rps"], hammer["p99_ms"]


def main():
    args = sys.argv[1:]
    rounds = 3
    if "--rounds" in args:
        at = args.index("--rounds")
        rounds = int(args[at + 1])
        del args[at:at + 2]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = Path(args[0]).resolve()
    nices = [int(n) for n in args[1:]]
    with tempfile.TemporaryDirectory(prefix="users-isolation-ab-") as tmp:
        work = Path(tmp)
        phc = B.phc_hash(ROOT / "target" / "release" / "examples")
        data = B.generate(work / "data", USERS, USERS, 0, phc, seed=1)
        url = f"sqlite://{work / 'bench.db'}"
        B.run_import(binary, url, data["users"])
        B.run_import(binary, url, data["sessions"])
        runs = {nice: [] for nice in nices}
        for _ in range(rounds):
            for nice in nices:
                runs[nice].append(one_run(binary, nice, work, data))
        for nice, figures in runs.items():
            kept, p99, login, login_p99 = (statistics.median(c) for c in zip(*figures))
            print(f"median nice {nice:2}: ReadSession kept {kept:.1%}, p99 {p99:.2f} ms; "
                  f"Login {login:.1f} req/s, p99 {login_p99:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
