"""The analyst page: ask in words, read the SQL and the result, chart it, fix the SQL, rate the answer."""
from __future__ import annotations

import sqlite3

import streamlit as st

from .. import charts, executor
from ..conversation import context_examples
from ..errors import Nl2SqlError
from . import session, sidebar
from .via_server import is_remote
from .session import Turn


def render() -> None:
    try:
        pipe = session.pipeline()
    except Nl2SqlError as e:  # a bad NL2SQL_* setting
        st.error(str(e))
        return
    conn = sidebar.connection(pipe)
    st.session_state["conn_db"] = conn.db if conn.schema is not None else _NO_DB  # where a typed question goes
    if conn.schema is not None:
        sidebar.schema_browser(conn.schema, pipe.warehouse(conn.db))

    st.title("Ask your data")
    if conn.error:
        st.error(conn.error)
    elif conn.pending:
        st.info("Enter a database file path or URL in the sidebar, or pick the demo warehouse.")
    job = _advance(pipe)
    target = session.follow_turn()
    for t in session.turns():  # the conversation as a thread, oldest first
        _turn(t, is_target=t is target)
    if job is not None:
        with st.chat_message("user"):
            st.markdown(job.turn.question)
        with st.chat_message("assistant"):
            _progress(job)
    queued = session.queue()
    for q in queued:
        with st.chat_message("user"):
            st.markdown(q.question)
            st.caption("Queued: answered after the question above.")

    follow = target is not None and target.db == st.session_state["conn_db"]
    st.session_state["follow_possible"] = follow
    if follow:
        st.session_state.setdefault("follow_up", True)
        st.toggle(f"Follow up on “{_short(target.question, 60)}”", key="follow_up",
                  help="Pass that question and its SQL to the model, so 'now only for 2024' refers to it.")
    full = len(queued) >= session.MAX_QUEUED
    if full:
        st.caption(f"{len(queued)} questions are waiting: the box opens again when the next answer is in.")
    st.chat_input("Wait for the answers above…" if full else "Ask a question about your data", key="question",
                  on_submit=_enqueue, disabled=conn.schema is None or full)


_NO_DB = "\0no database"  # conn_db when no database is open (None means the demo warehouse)


def _enqueue() -> None:
    """chat_input callback: it runs first thing in the rerun the question causes, so the question is kept even
    when that rerun interrupted the one showing an answer being written."""
    question = (st.session_state.get("question") or "").strip()
    db = st.session_state.get("conn_db", _NO_DB)
    if question and db != _NO_DB:
        follow = bool(st.session_state.get("follow_possible") and st.session_state.get("follow_up", True))
        session.queue().append(session.Queued(question, db, follow))


def _advance(pipe) -> session.Job | None:
    """Collect a finished answer into the thread, and start the next queued question. The running job, or None."""
    job = session.job()
    if job is not None and job.done.is_set():
        session.turns().append(job.turn)
        if job.warning:
            st.warning(job.warning)
        st.session_state["follow_turn"] = job.turn.id  # a follow-up now refers to the newest answer
        st.session_state["job"] = job = None
    if job is None and session.queue():
        st.session_state["job"] = job = _start(pipe, session.queue().pop(0))
    return job


def _start(pipe, q: session.Queued) -> session.Job:
    t = Turn(id=len(session.turns()) + 1, question=q.question, db=q.db, db_name="", dialect=None)
    try:
        schema = pipe.schema(q.db)  # opened by the sidebar: cached
        t.db_name, t.dialect = schema.name, schema.dialect
    except Exception:  # the job reports the same failure as its answer
        pass
    target = session.follow_turn() if q.follow else None
    if target is not None and target.db == q.db:
        t.context = context_examples(target.question, target.sql, target.dialect)
    return session.Job(t, session.session_id()).start(pipe)


@st.fragment(run_every=1.0)
def _progress(job: session.Job) -> None:
    """The answer being written: its stage and time so far, redrawn each second until it is in."""
    if job.done.is_set():
        st.rerun()  # the whole page: the answer joins the thread
    # not `with st.status(...)`: leaving the block would mark it complete
    st.status(f"{job.stage}… {job.elapsed:.0f} s", state="running").caption(
        "You can type the next question meanwhile: it is queued.")


def _turn(t: Turn, is_target: bool) -> None:
    with st.chat_message("user"):
        st.markdown(t.question)
    with st.chat_message("assistant"):
        if t.context:
            st.caption(f"Follow-up to “{_short(t.context[0][0], 80)}”")
        if t.answer is None:
            st.error(t.error)
            return
        if t.sql:
            if t.edited:
                st.caption("Your edited SQL" + (" (saved as the correct SQL)" if t.kept else ""))
            st.code(t.sql, language="sql")
        elif t.answer.raw_sql:
            st.caption("The model wrote:")
            st.code(t.answer.raw_sql, language="sql")
        if t.run_error:
            st.error(t.run_error)
        if t.df is not None:
            _result(t)
        timings = " · ".join(f"{k} {v:.2f} s" for k, v in t.answer.timings.items())
        if t.answer.candidates > 1 and t.answer.ok:  # how many of the decoded candidates gave this result
            timings += f" · {t.answer.agreement} of {t.answer.candidates} candidates agree"
        if t.answer.attempts > 1:  # repair decoded again after a failed first try (nl2sql/repair.py)
            timings += f" · {t.answer.attempts} attempts"
        st.caption(f"{timings} · model {t.answer.model} · adapter {t.answer.adapter} · {t.db_name}")
        _fix(t)
        _feedback(t, is_target)


def _result(t: Turn) -> None:
    st.dataframe(t.df, hide_index=True)
    note = f"{len(t.df):,} row{'s' if len(t.df) != 1 else ''}"
    if t.truncated:
        note += " — the result was cut at the row limit (NL2SQL_ROW_LIMIT); narrow the question or add a LIMIT"
    st.caption(note)
    s = charts.suggest(t.df)
    if not s.options:
        return
    kind = st.segmented_control("Chart", (*s.options, "off"), default=s.kind, key=f"chart-{t.id}",
                                format_func=str.capitalize)
    if kind and kind != "off":
        st.vega_lite_chart(charts.prepare(t.df), charts.spec(t.df, kind), width="stretch")


def _fix(t: Turn) -> None:
    with st.expander("Edit the SQL and run it again", expanded=t.edited or bool(t.run_error)):
        st.text_area("SQL", value=t.sql or t.answer.raw_sql or "", key=f"sql-{t.id}", height=140)
        left, right = st.columns(2)
        left.button("Run", key=f"run-{t.id}", on_click=_run_edit, args=(t.id,), type="primary")
        right.button("Keep as the correct SQL", key=f"keep-{t.id}", on_click=_keep, args=(t.id,),
                     disabled=not t.edited or t.kept or t.run_error is not None,
                     help="Log this SQL as the right answer to the question; the training export prefers it.")
        if t.kept:
            st.success("Saved as the correct SQL for this question.")


def _feedback(t: Turn, is_target: bool) -> None:
    left, right, follow = st.columns([1, 4, 1], vertical_alignment="center")
    with left:
        st.feedback("thumbs", key=f"rating-{t.id}", on_change=_rate, args=(t.id,))
        if st.session_state.get(f"rating-{t.id}") is not None:
            st.caption("Saved — thank you.")
    with right:
        st.text_input("Comment (optional)", key=f"comment-{t.id}", on_change=_comment, args=(t.id,),
                      placeholder="Comment (optional): what was right or wrong?", label_visibility="collapsed")
    with follow:
        if t.sql and not is_target:
            st.button("Follow up on this", key=f"follow-{t.id}", on_click=_follow, args=(t.id,),
                      help="The next question refers to this answer instead of the latest one.")


# --- callbacks: run before the page is drawn again, so what they change shows at once ---------------------
def _follow(turn_id: int) -> None:
    st.session_state["follow_turn"] = turn_id
    st.session_state["follow_up"] = True


def _run_edit(turn_id: int) -> None:
    t = session.turn(turn_id)
    sql = st.session_state.get(f"sql-{turn_id}", "").strip()
    pipe = session.pipeline()
    t.sql, t.edited, t.kept = sql, sql != (t.answer.sql or "").strip(), False
    try:
        result = (pipe.execute(t.db, sql) if is_remote(pipe)  # the server's guarded executor
                  else executor.run_checked(pipe.warehouse(t.db), sql, pipe.settings))
    except Nl2SqlError as e:
        t.df, t.truncated, t.run_error = None, False, str(e)
    else:
        t.df, t.truncated, t.run_error = result.df, result.truncated, None


def _keep(turn_id: int) -> None:
    t = session.turn(turn_id)
    if t.entry_id is not None and _save_feedback(t.entry_id, corrected_sql=t.sql):
        t.kept = True


def _rate(turn_id: int) -> None:
    t = session.turn(turn_id)
    value = st.session_state.get(f"rating-{turn_id}")
    if t.entry_id is not None and value is not None:
        _save_feedback(t.entry_id, rating=1 if value == 1 else -1)


def _comment(turn_id: int) -> None:
    t = session.turn(turn_id)
    text = (st.session_state.get(f"comment-{turn_id}") or "").strip()
    if t.entry_id is not None and text:
        _save_feedback(t.entry_id, comment=text)


def _save_feedback(entry_id: int, **fields) -> bool:
    """A rating, comment or correction into the query log (the server's, through it, when the app uses one).
    One that cannot be written is a warning, never a lost answer."""
    pipe = session.pipeline()
    if is_remote(pipe):
        try:
            pipe.feedback(entry_id, **fields)
        except Nl2SqlError as e:
            st.warning(f"Could not save that on the nl2sql server: {e}")
            return False
        return True
    settings = pipe.settings
    try:
        session.query_log(settings).feedback(entry_id, **fields)
    except (sqlite3.Error, OSError) as e:
        st.warning(f"Could not write to the query log at {settings.query_log_path}: {e}. "
                   "Check the disk, or point NL2SQL_QUERY_LOG at a writable file.")
        return False
    return True


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"
