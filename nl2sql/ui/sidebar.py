"""The sidebar: connection picker (demo warehouse, a DuckDB/SQLite file, a SQLAlchemy URL) and schema browser
(a search box, and at most a page of tables at once, so a warehouse of 1,000 tables stays usable)."""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from ..errors import Nl2SqlError
from .via_server import is_remote

DEMO, FILE, URL = "Demo warehouse", "DuckDB or SQLite file", "SQLAlchemy URL"


@dataclass
class Connection:
    db: str | None = None
    schema: object = None     # nl2sql.schema.Schema once open
    error: str | None = None  # what went wrong and what to do, for st.error
    pending: bool = False     # nothing entered yet


def connection(pipe) -> Connection:
    st.sidebar.header("Database")
    if is_remote(pipe):
        return _server_connection(pipe)
    kind = st.sidebar.radio("Connect to", (DEMO, FILE, URL), key="conn_kind", label_visibility="collapsed")
    if kind == DEMO:
        db = None
    elif kind == FILE:
        db = st.sidebar.text_input("File path", key="conn_path", placeholder="warehouse.duckdb or shop.sqlite").strip()
    else:
        db = st.sidebar.text_input("SQLAlchemy URL", key="conn_url",
                                   placeholder="postgresql+psycopg://user@host/db").strip()
    if db == "":
        return Connection(pending=True)
    return _open(pipe, db)


def _server_connection(pipe) -> Connection:
    """The databases `nl2sql serve` answers about (NL2SQL_SERVE_DATABASES), listed once per session."""
    st.sidebar.caption(f"Answered by the nl2sql server at {pipe.url}")
    names = st.session_state.get("server_databases")
    if not names:
        failed = _failure(_SERVER)
        if failed:
            return Connection(error=failed)
        try:
            names = st.session_state["server_databases"] = pipe.databases()
        except Nl2SqlError as e:
            return Connection(error=_remember(_SERVER, f"Cannot use the nl2sql server. {e}"))
        except Exception as e:  # an answer that is not nl2sql serve's (another service at that URL)
            return Connection(error=_remember(_SERVER, _unexpected(pipe, e)))
    db = st.sidebar.selectbox("Database", names, key="conn_server_db", label_visibility="collapsed")
    return _open(pipe, db)


_SERVER = "\0the server"  # where a failure to list the server's databases is remembered


def _failure(key) -> str | None:
    """What went wrong the last time `key` was tried, with a button to try again (a server that did not answer
    is not retried on every click)."""
    failures = st.session_state.setdefault("conn_failures", {})
    if key in failures and st.sidebar.button("Try again", key="conn_retry"):
        failures.pop(key)
        st.rerun()
    return failures.get(key)


def _remember(key, message: str) -> str:
    st.session_state.setdefault("conn_failures", {})[key] = message
    _failure(key)  # the retry button
    return message


def _open(pipe, db) -> Connection:
    failed = _failure(db)
    if failed:
        return Connection(db, error=failed)
    try:
        with st.spinner("Opening the database…"):
            schema = pipe.schema(db)
    except Nl2SqlError as e:
        return Connection(db, error=_remember(db, f"Cannot use that database. {e}"))
    except Exception as e:  # an unexpected driver error: say which, without its text (it may hold credentials)
        return Connection(db, error=_remember(db, _unexpected(pipe, e)))
    return Connection(db, schema)


def _unexpected(pipe, e: Exception) -> str:
    if is_remote(pipe):
        return (f"The nl2sql server at {pipe.url} sent an answer this app cannot read ({type(e).__name__}). Check "
                "that NL2SQL_SERVER is an `nl2sql serve` of the same nl2sql version as this app.")
    return (f"Cannot open that database ({type(e).__name__}). Check the path or URL: a .duckdb/.sqlite file that "
            "exists, or a URL such as postgresql+psycopg://user@host/db.")


PAGE = 25  # tables shown at once: a warehouse of 1,000 tables must not render 1,000 expanders


def matching_tables(schema, query: str) -> list:
    """Tables whose name, comment, columns or column comments hold every word of `query` (case-insensitive);
    tables matched by name first, then the others, each in schema order. An empty query matches every table."""
    terms = query.lower().split()
    if not terms:
        return list(schema.tables)
    by_name, by_content = [], []
    for t in schema.tables:
        name = t.name.lower()
        text = " ".join([name, t.comment.lower()] + [f"{c.name} {c.comment}".lower() for c in t.columns])
        if all(w in text for w in terms):
            (by_name if all(w in name for w in terms) else by_content).append(t)
    return by_name + by_content


def schema_browser(schema, warehouse=None) -> None:
    """Tables of `schema`, a page at a time, with a search box. A large schema is introspected without sample
    values (nl2sql/schema.py); `warehouse` lets the page read them for the tables it shows."""
    import pandas as pd
    st.sidebar.header("Schema")
    st.sidebar.caption(f"{schema.name} · {len(schema.tables)} tables · {schema.column_count} columns")
    query = st.sidebar.text_input("Find a table or column", key="schema_search",
                                  placeholder="table, column or comment words").strip()
    found = matching_tables(schema, query)
    shown_key = f"schema_shown:{schema.name}:{query}"
    limit = st.session_state.get(shown_key, PAGE)
    if query and not found:
        st.sidebar.caption(f"No table or column matches “{query}”.")
    elif len(found) > limit:
        st.sidebar.caption(f"Showing {limit} of {len(found)} {'matching ' if query else ''}tables"
                           f"{'' if query else ': type above to find one'}.")
    shown = found[:limit]
    if warehouse is not None and shown:
        from ..schema import Schema, with_samples
        try:  # memoised per warehouse: each table is read once
            shown = list(with_samples(warehouse, Schema(schema.name, schema.dialect, tuple(shown))).tables)
        except Exception:  # samples are a nicety: the browser still shows names and types
            pass
    for t in shown:
        with st.sidebar.expander(f"{t.name} ({len(t.columns)})"):
            if t.comment:
                st.caption(t.comment)
            fks = {fk.column: f"→ {fk.ref_table}.{fk.ref_column}" for fk in t.foreign_keys}
            rows = [{"column": c.name, "type": c.type, "key": "PK" if c.primary_key else fks.get(c.name, ""),
                     "comment": c.comment, "sample values": ", ".join(c.samples)} for c in t.columns]
            st.dataframe(pd.DataFrame(rows), hide_index=True)
    if len(found) > limit:
        st.sidebar.button(f"Show {min(PAGE, len(found) - limit)} more", key="schema_more",
                          on_click=lambda: st.session_state.__setitem__(shown_key, limit + PAGE))
