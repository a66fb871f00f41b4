"""The query log: concurrent writers from separate processes lose nothing, a process killed mid-write leaves a
readable log, older logs are migrated, and the training export follows its rules. Also the data team's figures
computed from it."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from nl2sql import monitoring
from nl2sql.querylog import QueryLog

WRITER = textwrap.dedent("""
    import sys
    from nl2sql.querylog import QueryLog
    path, tag, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    log = QueryLog(path)
    print("ready", flush=True)
    sys.stdin.readline()  # start together
    for i in range(n):
        eid = log.record(question=f"{tag} {i}", db="demo", sql="SELECT " + "x" * size, executed=True, latency=0.1)
        log.feedback(eid, rating=1 if i % 2 else -1, comment=f"{tag} {i}")
""")


def _writer(path, tag, n, size=10):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(n), str(size)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_two_processes_writing_1000_entries_each_lose_none(tmp_path):
    path = tmp_path / "log.sqlite"
    procs = [_writer(path, tag, 1000) for tag in ("a", "b")]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=600) == 0
    entries = QueryLog(path).entries()
    assert len(entries) == 2000
    for tag in ("a", "b"):
        mine = [e for e in entries if e["question"].startswith(tag + " ")]
        assert sorted(int(e["question"].split()[1]) for e in mine) == list(range(1000))
        assert all(e["comment"] == e["question"] and e["rating"] in (1, -1) for e in mine)  # updates kept too
    assert len({e["id"] for e in entries}) == 2000


def test_process_killed_mid_write_leaves_a_readable_log(tmp_path):
    path = tmp_path / "log.sqlite"
    p = _writer(path, "k", 100_000, size=200_000)  # large rows: the kill lands inside a write
    p.stdin.write("go\n")
    p.stdin.flush()
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        con = sqlite3.connect(path, timeout=30)
        n = con.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        con.close()
        if n >= 20:
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    log = QueryLog(path)
    entries = log.entries()
    assert len(entries) >= 20
    assert [e["id"] for e in entries] == list(range(1, len(entries) + 1))  # no gap, no torn row
    assert all(len(e["sql"]) == len("SELECT ") + 200_000 for e in entries)
    new = log.record(question="after the kill", db="demo", sql="SELECT 1", executed=True)
    assert log.entries()[-1]["id"] == new and log.entries()[-1]["question"] == "after the kill"


def test_an_older_log_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, db TEXT, "
                "question TEXT NOT NULL, sql TEXT, corrected_sql TEXT, executed INTEGER, error TEXT, rating INTEGER, "
                "comment TEXT, model TEXT, adapter TEXT, latency REAL)")
    con.execute("INSERT INTO entries (created, question, sql, rating) VALUES (1, 'old', 'SELECT 1', 1)")
    con.commit()
    con.close()
    log = QueryLog(path)
    log.record(question="new", db="demo", sql="SELECT 2", executed=True, dialect="duckdb", session="s1")
    old, new = log.entries()
    assert old["question"] == "old" and old["dialect"] is None and new["session"] == "s1"


def test_export_rules(tmp_path):
    log = QueryLog(tmp_path / "log.sqlite")
    rows = {
        "corrected beats generated": dict(sql="SELECT 1", rating=-1, corrected="SELECT 2"),
        "thumbs up": dict(sql="SELECT 3", rating=1),
        "thumbs down": dict(sql="SELECT 4", rating=-1),
        "unrated": dict(sql="SELECT 5"),
        "down, never validated": dict(sql=None, raw="SELECT nope FROM x", rating=-1),
    }
    for q, r in rows.items():
        eid = log.record(question=q, db="demo", sql=r["sql"], raw_sql=r.get("raw"), executed=r["sql"] is not None,
                         dialect="duckdb")
        log.feedback(eid, rating=r.get("rating"), corrected_sql=r.get("corrected"))
    eid = log.record(question="now only 2024", db="demo", sql="SELECT 6", executed=True, dialect="duckdb",
                     context=[("orders per year", "SELECT 7")])
    log.feedback(eid, rating=1)
    # DuckDB SQL is exported in the model's dialect (SQLite): ORDER BY keeps DuckDB's NULL ordering explicitly
    eid = log.record(question="ordered", db="demo", sql="SELECT a FROM t ORDER BY a", executed=True, dialect="duckdb")
    log.feedback(eid, rating=1)
    out = tmp_path / "pairs.jsonl"
    assert log.export_training(out) == 6
    got = {r["question"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert (got["corrected beats generated"]["sql"], got["corrected beats generated"]["label"]) == ("SELECT 2", "corrected")
    assert (got["thumbs up"]["label"], got["thumbs down"]["label"]) == ("positive", "negative")
    assert "unrated" not in got
    assert got["down, never validated"] == {"question": "down, never validated", "sql": "SELECT nope FROM x",
                                            "db": "demo", "label": "negative"}
    assert got["now only 2024"]["context"] == [["orders per year", "SELECT 7"]]
    assert got["ordered"]["sql"] == "SELECT a FROM t ORDER BY a NULLS LAST"


def test_cli_log_export(tmp_path):
    path = tmp_path / "log.sqlite"
    log = QueryLog(path)
    log.feedback(log.record(question="q", db="demo", sql="SELECT 1", executed=True), rating=1)
    out = tmp_path / "pairs.jsonl"
    r = subprocess.run([sys.executable, "-m", "nl2sql.cli", "log", "export", "--out", str(out)], capture_output=True,
                       text=True, env={**os.environ, "NL2SQL_QUERY_LOG": str(path)}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote 1 pairs" in r.stdout and json.loads(out.read_text())["sql"] == "SELECT 1"


def test_monitoring_figures_from_the_log(tmp_path):
    log = QueryLog(tmp_path / "log.sqlite")
    for i, (lat, rating) in enumerate([(1.0, 1), (2.0, -1), (3.0, None), (10.0, 1)]):
        eid = log.record(question=f"q{i}", db="demo", sql="SELECT 1", executed=i != 2, latency=lat)
        log.feedback(eid, rating=rating, corrected_sql="SELECT 2" if i == 1 else None)
    df = monitoring.log_frame(log.entries())
    lat = monitoring.latency_by_day(df).set_index("percentile")["seconds"]
    assert lat["p50"] == pytest.approx(2.5) and lat["p90"] == pytest.approx(7.9)
    fb = monitoring.feedback_by_day(df).set_index("measure")["rate"]
    assert (fb["thumbs up"], fb["thumbs down"], fb["corrected"], fb["executed"]) == (0.5, 0.25, 0.25, 0.75)
    assert monitoring.totals(df) == {"answers": 4, "rated": 3, "thumbs_up_share": pytest.approx(2 / 3),
                                     "corrected": 1, "p50": 2.5, "p90": pytest.approx(7.9)}
    assert monitoring.totals(monitoring.log_frame([]))["answers"] == 0
