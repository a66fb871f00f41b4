"""Per-session state of the analyst app: the pipeline, the query log, the turns of the conversation, and the
questions waiting to be answered.

Answers are written by a background thread (`Job`), never by the script run itself: a Streamlit rerun (a
question typed meanwhile, a click) interrupts the script, and an answer computed inside it would be lost with
it. The script only starts jobs, shows their progress and collects their result, so every run is quick, a
question typed during an answer is queued, and SIGTERM stops the server without waiting for the model.

Hook: a test (or an app embedding these pages) may put its own `nl2sql.api.Pipeline` in
`st.session_state[PIPELINE_KEY]` before the first run, e.g. one with a scripted fake generator; otherwise, with
NL2SQL_SERVER set, a ServerPipeline asks that `nl2sql serve` (nl2sql/ui/via_server.py), else the process-wide
`default_pipeline()` from NL2SQL_* settings is used.
"""
from __future__ import annotations

import atexit
import inspect
import logging
import os
import sqlite3
import threading
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from ..errors import Nl2SqlError
from ..querylog import QueryLog, db_key
from .via_server import is_remote

PIPELINE_KEY = "nl2sql_pipeline"
ASK_LOCK = threading.Lock()  # one model, many browser sessions: generate one answer at a time
MAX_QUEUED = 3               # questions waiting behind the one being answered; beyond that the box is disabled

_logs: dict[Path, QueryLog] = {}
_logs_lock = threading.Lock()


def pipeline():
    """The session's Pipeline: the test hook's, else one through `nl2sql serve` when NL2SQL_SERVER is set
    (nl2sql/ui/via_server.py: no model in this process), else the process-wide in-process one."""
    p = st.session_state.get(PIPELINE_KEY)
    if p is None:
        from ..config import Settings
        settings = Settings.from_env()
        if settings.server:
            from .via_server import server_pipeline
            p = server_pipeline(settings)
        else:
            from ..api import default_pipeline
            p = default_pipeline(settings)
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


def follow_turn() -> Turn | None:
    """The answer a follow-up question refers to: the one the analyst picked, else the latest with SQL."""
    chosen = turn(st.session_state.get("follow_turn", -1))
    return chosen or next((t for t in reversed(turns()) if t.sql), None)


@dataclass
class Queued:
    """A question typed while another was being answered: asked on the database it was typed against."""
    question: str
    db: str | None
    follow: bool                    # follow up on the latest answer (the follow-up toggle was on)


# What Pipeline.ask's timer stages are called in the progress line (nl2sql/api.py _Timer).
STAGES = {"schema": "Reading the schema", "values": "Looking up the values the question mentions",
          "knowledge": "Reading the glossary and verified examples",
          "link": "Linking the schema", "generate": "Writing SQL", "validate": "Checking the SQL",
          "execute": "Running the SQL"}


@dataclass
class Job:
    """One question being answered on a daemon thread; `turn` is filled in and logged when `done` is set."""
    turn: Turn
    session: str
    started: float = field(default_factory=time.monotonic)
    stage: str = "Waiting to start"
    warning: str | None = None      # the query log could not be written
    done: threading.Event = field(default_factory=threading.Event)

    def start(self, pipe) -> "Job":
        # daemon: a server asked to stop (SIGTERM) does not wait for the model to finish (see _exit_now)
        thread = threading.Thread(target=self._run, args=(pipe,), name=f"nl2sql-answer-{self.session}", daemon=True)
        with _running_lock:
            _running.add(thread)
        thread.start()
        return self

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _run(self, pipe) -> None:
        t = self.turn
        remote = is_remote(pipe)
        try:
            try:
                if remote:  # the server batches questions from every session: no lock here
                    self.stage = "Waiting for the nl2sql server to write and run the SQL"
                    a = self._ask(pipe)
                else:
                    a = self._ask_here(pipe)
            except Nl2SqlError as e:
                t.error = str(e)
            except Exception as e:  # a bug must end the job with a message, never leave it running forever
                logging.getLogger(__name__).exception("answering %r", t.question)  # the traceback: server log only
                # its kind only: a driver's message may hold credentials
                t.error = (f"Something went wrong while answering ({type(e).__name__}). Try again, or report it "
                           "with the question.")
            else:
                t.answer, t.sql, t.df, t.truncated, t.run_error = a, a.sql, a.df, a.truncated, a.error
            if remote:  # the server logged it, with this app as the client
                t.entry_id = getattr(t.answer, "entry_id", None)
            else:
                self._log(pipe.settings)
        finally:
            self.done.set()
            with _running_lock:
                _running.discard(threading.current_thread())

    def _ask_here(self, pipe):
        """Pipeline.ask in this process, one answer at a time (one model)."""
        if ASK_LOCK.locked():
            self.stage = "Waiting for another analyst's question to finish"
        with ASK_LOCK:
            if not pipe.model_loaded:
                self.stage = "Loading the model (the first question only)"
                pipe.generator
            self.stage = "Linking the schema and writing SQL"
            return self._ask(pipe)

    def _ask(self, pipe):
        t = self.turn
        # no follow-up: None lets the pipeline (or the server) pick the database's verified pairs as examples
        return pipe.ask(t.question, t.db, examples=t.context or None, session=self.session, **self._progress(pipe))

    def _progress(self, pipe) -> dict:
        """progress= for a Pipeline.ask that reports each stage as it starts (a callable taking the stage name)."""
        if "progress" not in inspect.signature(pipe.ask).parameters:
            return {}
        return {"progress": lambda stage: setattr(self, "stage", STAGES.get(stage, stage))}

    def _log(self, settings) -> None:
        t, a = self.turn, self.turn.answer
        try:
            t.entry_id = query_log(settings).record(
                question=t.question, db=db_key(t.db), sql=t.sql, executed=t.df is not None,
                error=t.run_error or t.error, model=a and a.model, adapter=a and a.adapter,
                latency=a and a.timings.get("total"), raw_sql=a and a.raw_sql, dialect=t.dialect,
                session=self.session, context=t.context or None, candidates=a and a.candidates,
                agreement=a and a.agreement, confidence=a and a.confidence, escalated=a and a.escalated,
                answered_by=a and a.answered_by, attempts=a and a.attempts)
        except (sqlite3.Error, OSError) as e:
            self.warning = (f"Could not write to the query log at {settings.query_log_path}: {e}. "
                            "Check the disk, or point NL2SQL_QUERY_LOG at a writable file.")


_running: set = set()  # answer threads still working
_running_lock = threading.Lock()


@atexit.register
def _exit_now() -> None:
    """Streamlit has stopped (SIGTERM, Ctrl-C): if an answer is still being written, end the process here.
    Letting the interpreter finalize under a thread that is inside the model's native code aborts it
    ("terminate called without an active exception", exit status -6). A half-written answer is not logged: the
    query log writes each entry in one transaction."""
    with _running_lock:
        busy = any(t.is_alive() for t in _running)
    if busy and _server_stopped():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _server_stopped() -> bool:
    """Whether a Streamlit server was asked to stop: never in tests (AppTest), whose exit status must stand."""
    try:
        from streamlit.runtime.runtime import Runtime, RuntimeState
        return Runtime.exists() and Runtime.instance().state in (RuntimeState.STOPPING, RuntimeState.STOPPED)
    except Exception:  # a Streamlit without these internals: let the interpreter exit the usual way
        return False


def queue() -> list[Queued]:
    return st.session_state.setdefault("queued", [])


def job() -> Job | None:
    """The question being answered for this browser session, if any."""
    return st.session_state.get("job")
