#!/usr/bin/env python3
"""ReadSession on PostgreSQL against `pgbench -S -M prepared`, with PostgreSQL on a
core of its own: the comparison bench/run.sh makes, once with every process on every
core ("shared") and once with PostgreSQL's processes pinned to the last core and the
client side (the service and wrk, or pgbench) to the others ("split").

    TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test bench/pg_pinned.py [ROUNDS]

PostgreSQL must run on this machine (its processes are found by name and pinned with
`taskset`, which needs the right to change their affinity; they are given every core
back at the end). Creates and drops two databases of its own, `pinned_service` and
`pinned_pgbench`. Seeds 1,000 users and their sessions through the service's import,
and pgbench's tables at scale 10; each figure is 5 s after 1 s of warm-up, the service
at 32 wrk connections and its default pool of 10, pgbench at 10 clients. Needs at
least two cores, what bench/run.sh installs (wrk, pgbench) and its build:
cargo build --release --bin users-service --examples.
"""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402

DATABASES = ("pinned_service", "pinned_pgbench")


def database_url(base, name):
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


def psql(base, sql):
    subprocess.run(["psql", base, "-qc", sql], check=True, capture_output=True)


def postgres_pids():
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip().startswith("postgres"):
                pids.append(proc.name)
        except OSError:
            continue
    return pids


def pin_postgres(cpus):
    for pid in postgres_pids():
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, pid], capture_output=True)


def main():
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        sys.exit("set TEST_DATABASE_URL to a PostgreSQL database on this machine")
    cores = os.cpu_count() or 1
    if cores < 2:
        sys.exit("needs two cores or more")
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    everything, database, clients = f"0-{cores - 1}", str(cores - 1), f"0-{cores - 2}"
    binary = str(B.ROOT / "target" / "release" / "users-service")
    work = Path(tempfile.mkdtemp(prefix="pg-pinned-"))
    service_url, pgbench_url = (database_url(base, name) for name in DATABASES)
    try:
        for name in DATABASES:
            psql(base, f'DROP DATABASE IF EXISTS "{name}"')
            psql(base, f'CREATE DATABASE "{name}"')
        logs = work / "logs"
        logs.mkdir()
        phc = B.phc_hash(B.ROOT / "target" / "release" / "examples")
        data = B.generate(work / "seed", 1000, 1000, 0, phc, seed=1)
        for part in ("users", "sessions"):
            B.run_import(binary, service_url, data[part])
        subprocess.run(["pgbench", "-i", "-q", "-s", "10", pgbench_url], check=True,
                       capture_output=True)
        for label, database_cpus, client_cpus in (("shared", everything, everything),
                                                  ("split", database, clients)):
            pin_postgres(database_cpus)
            for r in range(rounds):
                pinned = ["taskset", "-c", client_cpus]
                server = B.Server(lambda port: pinned + [binary, "--listen", f"127.0.0.1:{port}",
                                                         "--database-url", service_url],
                                  logs, "service")
                server.start()
                try:
                    for seconds in (1, 5):
                        argv = pinned + B.wrk_command(server.url, "ReadSession",
                                                      "pick:session_id", data["read_tokens"],
                                                      32, 2, seconds, 10)
                        fig = B.run_wrk_argv(argv, seconds, 10)
                finally:
                    server.stop()
                service = fig["requests"] / (fig["duration_us"] / 1e6)
                out = subprocess.run(pinned + ["pgbench", "-n", "-S", "-M", "prepared", "-c",
                                               "10", "-j", "2", "-T", "5", pgbench_url],
                                     capture_output=True, text=True, check=True).stdout
                tps = float(next(line for line in out.splitlines()
                                 if line.startswith("tps")).split("=")[1].split()[0])
                print(f"{label} (PostgreSQL on cores {database_cpus}, clients on "
                      f"{client_cpus}) round {r}: ReadSession {service:,.0f}/s, pgbench "
                      f"{tps:,.0f}/s: {100 * service / tps:.1f}%", flush=True)
    finally:
        pin_postgres(everything)
        for name in DATABASES:
            psql(base, f'DROP DATABASE IF EXISTS "{name}"')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
