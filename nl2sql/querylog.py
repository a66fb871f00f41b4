"""A durable local log of questions, SQL, results and feedback; exported as training pairs.

SQLite in WAL mode with full sync: each entry is one transaction, so several processes can write at once and
a process killed mid-write leaves the log readable (the half-written entry is simply absent).
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
# Columns added after the first release; older logs gain them on open.
_ADDED = {"raw_sql": "TEXT", "dialect": "TEXT", "session": "TEXT", "context": "TEXT",
          "rated_at": "REAL", "corrected_at": "REAL", "candidates": "INTEGER", "agreement": "INTEGER",
          "client": "TEXT",  # client: who asked through `nl2sql serve` (its client name and address); NULL in process
          # nl2sql/routing.py: the answer's confidence, how it was escalated (NULL, 'candidates', 'model'), who wrote it
          "confidence": "REAL", "escalated": "TEXT", "answered_by": "TEXT",
          "attempts": "INTEGER"}  # decodings the answer took (more than one: repaired); nl2sql/lifecycle.py compares


class QueryLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")  # one process at a time creates and migrates
            con.execute(_SCHEMA)
            have = {r[1] for r in con.execute("PRAGMA table_info(entries)")}
            for name, kind in _ADDED.items():
                if name not in have:
                    con.execute(f"ALTER TABLE entries ADD COLUMN {name} {kind}")
            con.execute("COMMIT")
        finally:
            con.close()

    def _connect(self):
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA busy_timeout=30000")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")  # a committed entry survives a power cut, not only a crash
        return con

    def record(self, *, question: str, db: str | None, sql: str | None, executed: bool, error: str | None = None,
               model: str | None = None, adapter: str | None = None, latency: float | None = None,
               raw_sql: str | None = None, dialect: str | None = None, session: str | None = None,
               context: list | None = None, candidates: int | None = None, agreement: int | None = None,
               client: str | None = None, confidence: float | None = None, escalated: str | None = None,
               answered_by: str | None = None, attempts: int | None = None) -> int:
        """Log one answered question; returns the entry id that feedback() refers to.
        candidates/agreement: how many SQL candidates were decoded and how many agreed on the answer;
        confidence/escalated/answered_by/attempts: as on the Answer (nl2sql/routing.py)."""
        con = self._connect()
        try:
            cur = con.execute(
                "INSERT INTO entries (created, db, question, sql, executed, error, model, adapter, latency, raw_sql, "
                "dialect, session, context, candidates, agreement, client, confidence, escalated, answered_by, "
                "attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), db, question, sql, int(executed), error, model, adapter, latency, raw_sql, dialect,
                 session, json.dumps(context) if context else None, candidates, agreement, client, confidence,
                 escalated, answered_by, attempts))
            return int(cur.lastrowid)
        finally:
            con.close()

    def feedback(self, entry_id: int, *, rating: int | None = None, comment: str | None = None,
                 corrected_sql: str | None = None) -> bool:
        """Set the rating (1 up, -1 down), comment or corrected SQL of an entry; None leaves a field as it is.
        False when there is no such entry (nothing written)."""
        now = time.time()
        con = self._connect()
        try:
            cur = con.execute("UPDATE entries SET rating = COALESCE(?, rating), comment = COALESCE(?, comment), "
                              "corrected_sql = COALESCE(?, corrected_sql), "
                              "rated_at = CASE WHEN ? IS NULL THEN rated_at ELSE ? END, "
                              "corrected_at = CASE WHEN ? IS NULL THEN corrected_at ELSE ? END WHERE id = ?",
                              (rating, comment, corrected_sql, rating, now, corrected_sql, now, entry_id))
            return cur.rowcount > 0
        finally:
            con.close()

    def add_verified(self, pairs, *, db: str, dialect: str | None, comment: str) -> int:
        """Write verified (question, SQL) pairs as corrected entries, all in one transaction (a failure leaves
        the log as it was). Used by `nl2sql examples import`; nl2sql/examples.py retrieves them."""
        pairs = list(pairs)
        if not pairs:
            return 0
        now = time.time()
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.executemany(
                    "INSERT INTO entries (created, db, question, sql, corrected_sql, executed, rating, comment, "
                    "dialect, session, rated_at, corrected_at) VALUES (?, ?, ?, ?, ?, 0, 1, ?, ?, 'import', ?, ?)",
                    [(now, db, q, sql, sql, comment, dialect, now, now) for q, sql in pairs])
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return len(pairs)
        finally:
            con.close()

    def entries(self) -> list[dict]:
        return self._select("SELECT * FROM entries ORDER BY id")

    def entry(self, entry_id: int) -> dict | None:
        """One entry, or None when the log has no such id."""
        rows = self._select("SELECT * FROM entries WHERE id = ?", (entry_id,))
        return rows[0] if rows else None

    def _select(self, sql: str, params: tuple = ()) -> list[dict]:
        con = self._connect()
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(sql, params)]
        finally:
            con.close()

    def export_training(self, out: Path) -> int:
        """JSONL of {question, sql, db, label[, context, model_sql]}: corrected SQL wins over generated (the model's
        SQL it replaced is kept as model_sql, for preference training); thumbs-down without a correction is kept as
        a negative example (label "negative"); unrated answers are skipped. SQL is
        written in the model's dialect; `context` holds the (question, SQL) pairs a follow-up was asked after."""
        from .validate import to_model_dialect
        rows = []
        for e in self.entries():
            if e["corrected_sql"]:
                sql, label = e["corrected_sql"], "corrected"
            elif e["rating"] == 1 and e["sql"]:
                sql, label = e["sql"], "positive"
            elif e["rating"] == -1 and (e["sql"] or e["raw_sql"]):
                sql, label = e["sql"] or e["raw_sql"], "negative"
            else:
                continue
            row = {"question": e["question"], "sql": to_model_dialect(sql, e["dialect"]), "db": e["db"], "label": label}
            model_sql = e["sql"] or e["raw_sql"]
            if label == "corrected" and model_sql and e["session"] != "import":
                row["model_sql"] = to_model_dialect(model_sql, e["dialect"])  # what was corrected: DPO's rejected
            if e["context"]:
                row["context"] = json.loads(e["context"])
            rows.append(row)
        out = Path(out)
        tmp = out.with_suffix(out.suffix + f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, out)
        return len(rows)


def db_key(db) -> str:
    """How the log names a database: 'demo', a resolved file path, or the URL without its password (so the
    training pipeline can reopen it, the example store can find its pairs, and no secret is written to disk)."""
    if db is None:
        return "demo"
    url = getattr(db, "url", None)  # a SQLAlchemy Engine
    if url is not None and not isinstance(db, str):
        return url.set(password=None).render_as_string(hide_password=False)
    db = str(db)
    if "://" in db:
        try:
            import sqlalchemy as sa
            return sa.make_url(db).set(password=None).render_as_string(hide_password=False)
        except Exception:  # noqa: BLE001 - an unparsable URL is named by its scheme only
            return db.split("://", 1)[0] + "://…"
    return str(Path(db).expanduser().resolve())
