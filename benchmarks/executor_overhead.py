"""What running embedded engines in a killable worker process costs per query, and how well it holds.

    python benchmarks/executor_overhead.py [--n 300]

Per query: median and p90 of Warehouse.run() for the same queries in the worker (a path nl2sql opens) and
in-process (a connection or Engine built by your own code, which nl2sql trusts and runs as is), on DuckDB
and SQLite. Then the limits: how far past the statement timeout a query DuckDB's interrupt cannot stop ends,
and the worker's peak resident memory on a query that builds a value past the memory limit.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def _make(tmp: Path):
    import sqlite3

    import duckdb
    rows = [(i, f"name {i}", i % 17, i * 1.5) for i in range(1000)]
    duck = tmp / "bench.duckdb"
    con = duckdb.connect(str(duck))
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name VARCHAR, grp INTEGER, amount DOUBLE)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    con.close()
    lite = tmp / "bench.sqlite"
    con = sqlite3.connect(lite)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, grp INTEGER, amount REAL)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
    con.commit()
    con.close()
    return duck, lite


QUERIES = ["SELECT COUNT(*) FROM t", "SELECT grp, SUM(amount) FROM t GROUP BY grp ORDER BY grp",
           "SELECT * FROM t ORDER BY id LIMIT 100"]


def _time(wh, n: int) -> list[float]:
    out = []
    for i in range(n):
        sql = QUERIES[i % len(QUERIES)]
        t0 = time.perf_counter()
        wh.run(sql, row_limit=1000, timeout=10.0)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _row(label: str, ms: list[float]) -> str:
    ms = sorted(ms)
    return f"| {label} | {statistics.median(ms):.2f} | {ms[int(len(ms) * 0.9)]:.2f} |"


def main(argv=None) -> int:
    import duckdb
    import sqlalchemy as sa

    from nl2sql import executor
    from nl2sql.config import Settings
    from nl2sql.errors import Nl2SqlError
    from nl2sql.warehouse import open_warehouse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=300)
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="nl2sql-bench-"))
    duck, lite = _make(tmp)
    settings = Settings.from_env(data_dir=tmp / "data", memory_limit="256MB")
    print(f"{a.n} queries each ({', '.join(QUERIES)}), milliseconds per Warehouse.run()\n")
    print("| engine, where | median | p90 |\n|---|---|---|")
    medians = {}
    for label, make in [
        ("DuckDB, worker process", lambda: open_warehouse(str(duck), settings)),
        ("DuckDB, in-process (own connection)", lambda: open_warehouse(duckdb.connect(str(duck), read_only=True), settings)),
        ("SQLite, worker process", lambda: open_warehouse(str(lite), settings)),
        ("SQLite, in-process (own Engine)", lambda: open_warehouse(sa.create_engine(f"sqlite:///{lite}"), settings)),
    ]:
        wh = make()
        _time(wh, 20)  # warm up
        ms = _time(wh, a.n)
        medians[label] = statistics.median(ms)
        print(_row(label, ms))
        wh.close()
    for engine in ("DuckDB", "SQLite"):
        extra = medians[f"{engine}, worker process"] - medians[[k for k in medians if k.startswith(engine + ", in")][0]]
        print(f"\n{engine}: the worker adds {extra:.2f} ms median per query")

    # the SQL checks on the same queries: parse, allowlists, write back out, parse and check that text again
    wh = open_warehouse(str(duck), settings)
    ms = []
    for i in range(a.n):
        t0 = time.perf_counter()
        executor.guard(wh, QUERIES[i % len(QUERIES)], settings)
        ms.append((time.perf_counter() - t0) * 1000)
    print("\n| executor.guard() (SQL checks, DuckDB) | median | p90 |\n|---|---|---|\n" + _row("guard", ms))
    wh.close()

    # limits: a call DuckDB cannot interrupt, and a value past the memory limit (SQL checks off, as in tests/safety)
    executor._CHECK_SQL = False
    wh = open_warehouse(str(duck), settings.replace(statement_timeout=1.0))
    for sql, timeout in [("SELECT length(regexp_replace(repeat('ab', 20000000), '(a|b)', 'xy', 'g'))", 1.0),
                         ("SELECT length(repeat('ab', 300000000))", 30.0),
                         ("SELECT list_sort(list_reverse(range(30000000)))[1]", 30.0)]:
        wh.run("SELECT 1", row_limit=1, timeout=5)  # a started worker
        pid = wh._worker._proc.pid
        peak = [0]
        done = threading.Event()

        def watch():
            while not done.is_set():
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        peak[0] = max(peak[0], int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
                except OSError:
                    break
                time.sleep(0.005)
        threading.Thread(target=watch, daemon=True).start()
        t0 = time.monotonic()
        try:
            wh.run(sql, row_limit=10, timeout=timeout)
            outcome = "ran"
        except Nl2SqlError as e:
            outcome = type(e).__name__
        took = time.monotonic() - t0
        done.set()
        print(f"\n{sql}\n  timeout {timeout:g} s: {outcome} after {took:.2f} s "
              f"({took - timeout:+.2f} s past the timeout); worker peak RSS {peak[0] / 1e6:.0f} MB "
              f"(memory limit 256 MB + baseline {wh._worker._baseline_rss / 1e6:.0f} MB)")
    wh.close()
    executor._CHECK_SQL = True
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
