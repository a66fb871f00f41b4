"""A durable local log of questions, SQL, results and feedback; exported as training pairs.

SQLite in WAL mode: each entry is one transaction, so several processes can write at once and a process
killed mid-write leaves the log readable (the half-written entry is simply absent).
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    db TEXT, question TEXT NOT NULL, sql TEXT, corrected_sql TEXT,
    executed INTEGER, error TEXT, rating INTEGER, comment TEXT,
    model TEXT, adapter TEXT, latency REAL
);
"""


class QueryLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)

    def _connect(self):
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def record(self, *, question: str, db: str | None, sql: str | None, executed: bool, error: str | None = None,
               model: str | None = None, adapter: str | None = None, latency: float | None = None) -> int:
        con = self._connect()
        try:
            cur = con.execute("INSERT INTO entries (created, db, question, sql, executed, error, model, adapter, latency) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (time.time(), db, question, sql, int(executed), error, model, adapter, latency))
            return int(cur.lastrowid)
        finally:
            con.close()

    def feedback(self, entry_id: int, *, rating: int | None = None, comment: str | None = None,
                 corrected_sql: str | None = None) -> None:
        con = self._connect()
        try:
            con.execute("UPDATE entries SET rating = COALESCE(?, rating), comment = COALESCE(?, comment), "
                        "corrected_sql = COALESCE(?, corrected_sql) WHERE id = ?", (rating, comment, corrected_sql, entry_id))
        finally:
            con.close()

    def entries(self) -> list[dict]:
        con = self._connect()
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute("SELECT * FROM entries ORDER BY id")]
        finally:
            con.close()

    def export_training(self, out: Path) -> int:
        """JSONL of {question, sql, db, label}: corrected SQL wins over generated; thumbs-down without a
        correction is kept as a negative example (label "negative"); unrated executed answers are skipped."""
        rows = []
        for e in self.entries():
            if e["corrected_sql"]:
                rows.append({"question": e["question"], "sql": e["corrected_sql"], "db": e["db"], "label": "corrected"})
            elif e["rating"] == 1 and e["sql"]:
                rows.append({"question": e["question"], "sql": e["sql"], "db": e["db"], "label": "positive"})
            elif e["rating"] == -1 and e["sql"]:
                rows.append({"question": e["question"], "sql": e["sql"], "db": e["db"], "label": "negative"})
        out = Path(out)
        tmp = out.with_suffix(out.suffix + f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, out)
        return len(rows)
