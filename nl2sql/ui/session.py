"""Per-session state of the analyst app: the pipeline, the query log, and the turns of the conversation.

Hook: a test (or an app embedding these pages) may put its own `nl2sql.api.Pipeline` in
`st.session_state[PIPELINE_KEY]` before the first run, e.g. one with a scripted fake generator; otherwise the
process-wide `default_pipeline()` from NL2SQL_* settings is used.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from ..querylog import QueryLog

PIPELINE_KEY = "nl2sql_pipeline"
ASK_LOCK = threading.Lock()  # one model, many browser sessions: generate one answer at a time

_logs: dict[Path, QueryLog] = {}
_logs_lock = threading.Lock()


def pipeline():
    p = st.session_state.get(PIPELINE_KEY)
    if p is None:
        from ..api import default_pipeline
        p = default_pipeline()
    return p


def query_log(settings) -> QueryLog:
    path = Path(settings.query_log_path)
    with _logs_lock:
        if path not in _logs:
            _logs[path] = QueryLog(path)
        return _logs[path]


def session_id() -> str:
    return st.session_state.setdefault("session_id", uuid.uuid4().hex[:12])


@dataclass
class Turn:
    """One question and what became of it. `sql`/`df` are what is shown now: the generated SQL and its result,
    or the analyst's edit once it ran."""
    id: int
    question: str
    db: str | None                  # the db= value it was asked on
    db_name: str
    dialect: str | None
    answer: object = None           # nl2sql.api.Answer, or None when the question could not be asked
    error: str | None = None        # why the question could not be asked (setup problem)
    sql: str | None = None
    df: object = None
    truncated: bool = False
    run_error: str | None = None    # why the SQL shown did not run
    edited: bool = False
    kept: bool = False              # the edit was saved as the corrected SQL
    entry_id: int | None = None     # its row in the query log
    context: list = field(default_factory=list)   # [(question, sql)] it followed up on


def turns() -> list[Turn]:
    return st.session_state.setdefault("turns", [])


def turn(turn_id: int) -> Turn | None:
    return next((t for t in turns() if t.id == turn_id), None)


def open_turn() -> Turn | None:
    ts = turns()
    chosen = turn(st.session_state.get("open_turn", -1))
    return chosen or (ts[-1] if ts else None)


def log_db(db: str | None) -> str:
    """How the log names a database: 'demo', a resolved file path, or the URL without its password (so the
    training pipeline can reopen it, and no secret is written to disk)."""
    if db is None:
        return "demo"
    if "://" in db:
        try:
            import sqlalchemy as sa
            return sa.make_url(db).set(password=None).render_as_string(hide_password=False)
        except Exception:
            return db.split("://", 1)[0] + "://…"
    return str(Path(db).expanduser().resolve())
