"""The analyst page: ask in words, read the SQL and the result, chart it, fix the SQL, rate the answer."""
from __future__ import annotations

import sqlite3

import streamlit as st

from .. import charts, executor
from ..conversation import context_examples
from ..errors import Nl2SqlError
from . import session, sidebar
from .session import Turn


def render() -> None:
    try:
        pipe = session.pipeline()
    except Nl2SqlError as e:  # a bad NL2SQL_* setting
        st.error(str(e))
        return
    conn = sidebar.connection(pipe)
    _history()
    if conn.schema is not None:
        sidebar.schema_browser(conn.schema, pipe.warehouse(conn.db))

    st.title("Ask your data")
    if conn.error:
        st.error(conn.error)
    elif conn.pending:
        st.info("Enter a database file path or URL in the sidebar, or pick the demo warehouse.")
    opened = session.open_turn()
    for t in session.turns():
        _turn(t, is_open=t is opened)

    follow = None
    if opened and opened.sql and not opened.run_error and opened.db == conn.db and conn.schema is not None:
        on = st.toggle(f"Follow up on “{_short(opened.question, 60)}”", value=True, key="follow_up",
                       help="Pass that question and its SQL to the model, so 'now only for 2024' refers to it.")
        follow = opened if on else None
    question = st.chat_input("Ask a question about your data", disabled=conn.schema is None)
    if question:
        _ask(pipe, conn, question, follow)


def _ask(pipe, conn, question: str, follow: Turn | None) -> None:
    turns = session.turns()
    t = Turn(id=len(turns) + 1, question=question, db=conn.db, db_name=conn.schema.name, dialect=conn.schema.dialect)
    if follow is not None:
        t.context = context_examples(follow.question, follow.sql, follow.dialect)
    with st.chat_message("user"):
        st.markdown(question)
    with st.chat_message("assistant"):
        try:
            first = not pipe.model_loaded
            with st.spinner("Loading the model, then writing SQL (the first question takes a minute or two)…"
                            if first else "Writing SQL…"), session.ASK_LOCK:
                a = pipe.ask(question, conn.db, examples=t.context)
        except Nl2SqlError as e:
            t.error = str(e)
        else:
            t.answer, t.sql, t.df, t.truncated, t.run_error = a, a.sql, a.df, a.truncated, a.error
    a = t.answer
    t.entry_id = _log(lambda log: log.record(
        question=question, db=session.log_db(conn.db), sql=t.sql, executed=t.df is not None,
        error=t.run_error or t.error, model=a and a.model, adapter=a and a.adapter,
        latency=a and a.timings.get("total"), raw_sql=a and a.raw_sql, dialect=t.dialect,
        session=session.session_id(), context=t.context or None, candidates=a and a.candidates,
        agreement=a and a.agreement))
    turns.append(t)
    st.session_state["open_turn"] = t.id
    st.rerun()


def _turn(t: Turn, is_open: bool) -> None:
    with st.chat_message("user"):
        st.markdown(t.question)
    with st.chat_message("assistant"):
        if not is_open:
            rows = f"{len(t.df)} rows" if t.df is not None else "no result"
            st.caption(f"{rows} · {_short(t.sql or t.error or t.run_error or '', 100)}")
            st.button("Open", key=f"open-{t.id}", on_click=_open, args=(t.id,))
            return
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
        _feedback(t)


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


def _feedback(t: Turn) -> None:
    left, right = st.columns([1, 4], vertical_alignment="center")
    with left:
        st.feedback("thumbs", key=f"rating-{t.id}", on_change=_rate, args=(t.id,))
        if st.session_state.get(f"rating-{t.id}") is not None:
            st.caption("Saved — thank you.")
    with right:
        st.text_input("Comment (optional)", key=f"comment-{t.id}", on_change=_comment, args=(t.id,),
                      placeholder="Comment (optional): what was right or wrong?", label_visibility="collapsed")


def _history() -> None:
    turns = session.turns()
    if not turns:
        return
    st.sidebar.header("History")
    opened = session.open_turn()
    for t in reversed(turns):
        st.sidebar.button(_short(t.question, 60), key=f"history-{t.id}", on_click=_open, args=(t.id,),
                          type="primary" if t is opened else "secondary", width="stretch")


# --- callbacks: run before the page is drawn again, so what they change shows at once ---------------------
def _open(turn_id: int) -> None:
    st.session_state["open_turn"] = turn_id


def _run_edit(turn_id: int) -> None:
    t = session.turn(turn_id)
    sql = st.session_state.get(f"sql-{turn_id}", "").strip()
    pipe = session.pipeline()
    t.sql, t.edited, t.kept = sql, sql != (t.answer.sql or "").strip(), False
    try:
        result = executor.run_checked(pipe.warehouse(t.db), sql, pipe.settings)
    except Nl2SqlError as e:
        t.df, t.truncated, t.run_error = None, False, str(e)
    else:
        t.df, t.truncated, t.run_error = result.df, result.truncated, None


def _keep(turn_id: int) -> None:
    t = session.turn(turn_id)
    if t.entry_id is not None and _log(lambda log: log.feedback(t.entry_id, corrected_sql=t.sql)) is not False:
        t.kept = True


def _rate(turn_id: int) -> None:
    t = session.turn(turn_id)
    value = st.session_state.get(f"rating-{turn_id}")
    if t.entry_id is not None and value is not None:
        _log(lambda log: log.feedback(t.entry_id, rating=1 if value == 1 else -1))


def _comment(turn_id: int) -> None:
    t = session.turn(turn_id)
    text = (st.session_state.get(f"comment-{turn_id}") or "").strip()
    if t.entry_id is not None and text:
        _log(lambda log: log.feedback(t.entry_id, comment=text))


def _log(write):
    """Write to the query log; a log that cannot be written is a warning, never a lost answer."""
    settings = session.pipeline().settings
    try:
        result = write(session.query_log(settings))
    except (sqlite3.Error, OSError) as e:
        st.warning(f"Could not write to the query log at {settings.query_log_path}: {e}. "
                   "Check the disk, or point NL2SQL_QUERY_LOG at a writable file.")
        return False
    return result


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"
